"""Stage `importance`: per-category layer importance (and the same measure over all categories
pooled, for the global plan) -> data/importance.npz, its split-half stability, and a heatmap."""
from pathlib import Path

import numpy as np

from ais.evaluation.importance import METHODS, measure
from ais.evaluation.references import FILE as REFERENCE, References
from ais.files import save_npz, write_csv, write_json
from ais.model.engine import Engine
from ais.model.loading import load_model
from ais.params import get, load_params
from ais.report.plots import plot_importance
from ais.routing.corpus import prompts_by_category, read_corpus
from ais.routing.budget import minmax_per_category
from ais.routing.embedding import resolve_pivot

if __name__ == "__main__":
    params = load_params()
    method = get(params, "importance.method")
    model, tokenizer = load_model("data/model", get(params, "model.dtype"), get(params, "model.device"))
    n_layers = model.config.num_hidden_layers
    by_category = prompts_by_category(read_corpus(Path("data/corpus.jsonl")), "importance")
    engine = Engine(model)
    raw = measure(engine, tokenizer, by_category, None, get(params, "importance.n_groups"),
                  method, resolve_pivot(get(params, "router.pivot_layer"), n_layers), get(params, "importance.greedy_layers"),
                  references=References(REFERENCE, engine))
    measured = [m for m in METHODS if np.isfinite(raw[m]).any()]
    normalised = {m: minmax_per_category(raw[m]) for m in measured}
    pooled = {m: minmax_per_category(raw[f"global_{m}"])[0] for m in measured}
    categories = [str(c) for c in raw["categories"]]
    save_npz("data/importance.npz", method=np.array(method), importance=normalised[method].astype(np.float32),
             global_importance=pooled[method].astype(np.float32),
             **{f"raw_{m}": raw[m] for m in (*measured, "group_kl")}, **{f"norm_{m}": normalised[m] for m in measured},
             **{f"raw_global_{m}": raw[f"global_{m}"] for m in measured},
             categories=raw["categories"], group_starts=raw["groups"])
    plot_importance(normalised, raw, categories, Path("reports/importance.png"))
    write_csv("reports/importance_per_layer.csv",
              [{"layer": i, "global": round(float(pooled[method][i]), 4),
                **{c: round(float(normalised[method][k, i]), 4) for k, c in enumerate(categories)}}
               for i in range(n_layers)])
    stability = raw["stability"]
    write_json("reports/importance.json", {
        "method": method, "n_prompts_per_category": {c: len(p) for c, p in by_category.items()},
        "split_half_spearman": {c: round(stability[method][c], 4) for c in categories},
        "split_half_spearman_mean": round(float(np.mean(list(stability[method].values()))), 4),
        "split_half_spearman_by_method": {m: round(float(np.mean(list(v.values()))), 4) for m, v in stability.items()},
        "split_half_spearman_all_layers_mean": round(float(np.mean(list(raw["stability_all_layers"][method].values()))), 4),
        "split_half_layers": "past the router's pivot (the layers a plan may skip); _all_layers: every measured layer",
        "least_important_layer": {c: int(np.argsort(normalised[method][k][1:])[0] + 1) for k, c in enumerate(categories)},
        "mean_single_layer_kl": {c: round(float(np.nanmean(raw["single"][k])), 4) for k, c in enumerate(categories)},
        "group_kl": {c: [round(float(v), 3) for v in raw["group_kl"][k]] for k, c in enumerate(categories)},
    })
    print(f"importance: {method}; split-half Spearman per category {stability[method]}")
