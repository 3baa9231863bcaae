"""Stage `pivot_sweep`: k-NN routing accuracy against the router's pivot layer, on a subsample."""
import random
from pathlib import Path

import numpy as np

from ais.atomic import write_json
from ais.corpus import read_corpus
from ais.model import load_model
from ais.params import get, load_params
from ais.plots import plot_pivot_sweep
from ais.report_io import write_csv
from ais.router import embed_all_layers
from ais.topomap import TopoMap

if __name__ == "__main__":
    params = load_params()
    model, tokenizer = load_model("data/model", get(params, "model.dtype", str), get(params, "model.device", str))
    per_category = get(params, "router.sweep_per_category", int, lo=1)
    k = get(params, "router.k", int, lo=1)
    rows = read_corpus(Path("data/corpus.jsonl"))
    rng = random.Random(get(params, "corpus.seed", int))
    categories = sorted({r["category"] for r in rows})
    sample = []
    for c in categories:
        on_map = [r for r in rows if r["split"] == "map" and r["category"] == c]
        sample += rng.sample(on_map, min(per_category, len(on_map)))
    held = []
    for c in categories:
        for split in ("heldout", "heldout_task"):
            held += [r for r in rows if r["split"] == split and r["category"] == c][:per_category // 2]
    prompts = [r["prompt"] for r in sample + held]
    layers = embed_all_layers(
        model, tokenizer, prompts, get(params, "router.pooling", str), get(params, "router.batch_size", int, lo=1))
    labels = np.array([categories.index(r["category"]) for r in sample + held])
    n_map = len(sample)
    table = []
    for pivot in range(1, layers.shape[0] + 1):
        topo = TopoMap(layers[pivot - 1, :n_map], labels[:n_map], categories, {})
        row = {"pivot_layer": pivot}
        for split in ("heldout", "heldout_task"):
            mask = np.array([r["split"] == split for r in held])
            if mask.any():
                pred = topo.predict_knn(layers[pivot - 1, n_map:][mask], min(k, n_map))
                row[f"knn_accuracy_{split}"] = round(float((pred == labels[n_map:][mask]).mean()), 4)
        table.append(row)
    write_csv("reports/pivot_sweep.csv", table)
    plot_pivot_sweep(table, Path("reports/pivot_sweep.png"), chance=1 / len(categories),
                     title=f"k-NN routing accuracy vs pivot ({n_map} map prompts, {len(held)} held out, k={k})")
    best = max(table, key=lambda r: r.get("knn_accuracy_heldout", 0))
    write_json("reports/pivot_sweep.json", {"n_map_subsample": n_map, "best_pivot_heldout": best["pivot_layer"],
                                             "best_knn_accuracy_heldout": best.get("knn_accuracy_heldout")})
    print(f"pivot_sweep: best pivot {best['pivot_layer']} ({best})")
