"""Stage `importance`: per-category layer importance -> data/importance.npz and a heatmap."""
from pathlib import Path

import numpy as np

from ais.files import save_npz, write_json
from ais.routing.corpus import prompts_by_category, read_corpus
from ais.evaluation.importance import METHODS, measure, minmax_per_category
from ais.model.loading import load_model
from ais.params import get, load_params
from ais.report.plots import plot_importance
from ais.files import write_csv

if __name__ == "__main__":
    params = load_params()
    method = get(params, "importance.method")
    model, tokenizer = load_model("data/model", get(params, "model.dtype"), get(params, "model.device"))
    by_category = prompts_by_category(read_corpus(Path("data/corpus.jsonl")), "importance")
    raw = measure(model, tokenizer, by_category, get(params, "importance.n_continuation"),
                  get(params, "importance.n_groups"))
    normalised = {m: minmax_per_category(raw[m]) for m in METHODS}
    categories = [str(c) for c in raw["categories"]]
    save_npz("data/importance.npz", method=np.array(method), importance=normalised[method].astype(np.float32),
             **{f"raw_{m}": raw[m] for m in (*METHODS, "group_kl")}, **{f"norm_{m}": normalised[m] for m in METHODS},
             categories=raw["categories"], group_starts=raw["groups"])
    plot_importance(normalised, raw, categories, Path("reports/importance.png"))
    n_layers = normalised[method].shape[1]
    write_csv("reports/importance_per_layer.csv",
              [{"layer": i, **{c: round(float(normalised[method][k, i]), 4) for k, c in enumerate(categories)}}
               for i in range(n_layers)])
    least = {c: int(np.argsort(normalised[method][k][1:])[0] + 1) for k, c in enumerate(categories)}
    write_json("reports/importance.json", {
        "method": method, "n_prompts_per_category": {c: len(p) for c, p in by_category.items()},
        "least_important_layer": least,
        "mean_single_layer_kl": {c: round(float(np.nanmean(raw["single"][k])), 4) for k, c in enumerate(categories)},
        "group_kl": {c: [round(float(v), 3) for v in raw["group_kl"][k]] for k, c in enumerate(categories)},
    })
    print(f"importance: {method}; least important layer per category {least}")
