"""Stage `pivot_sweep`: k-NN routing accuracy against the router's pivot layer, on a subsample."""
from pathlib import Path

from ais.files import write_json
from ais.routing.corpus import read_corpus
from ais.model.loading import load_model
from ais.params import get, load_params
from ais.report.plots import plot_pivot_sweep
from ais.files import write_csv
from ais.routing.embedding import embed_all_layers
from ais.routing.accuracy import pivot_sweep, sweep_sample

if __name__ == "__main__":
    params = load_params()
    model, tokenizer = load_model("data/model", get(params, "model.dtype"), get(params, "model.device"))
    k = get(params, "router.k")
    rows = read_corpus(Path("data/corpus.jsonl"))
    sample, held = sweep_sample(rows, get(params, "router.sweep_per_category"), get(params, "corpus.seed"))
    layers = embed_all_layers(model, tokenizer, [r["prompt"] for r in sample + held],
                              get(params, "router.pooling"), get(params, "router.batch_size"))
    table = pivot_sweep(layers, sample, held, k)
    n_categories = len({r["category"] for r in rows})
    write_csv("reports/pivot_sweep.csv", table)
    plot_pivot_sweep(table, Path("reports/pivot_sweep.png"), chance=1 / n_categories,
                     title=f"k-NN routing accuracy vs pivot ({len(sample)} map prompts, {len(held)} held out, k={k})")
    best = max(table, key=lambda r: r.get("knn_accuracy_heldout", 0))
    write_json("reports/pivot_sweep.json", {"n_map_subsample": len(sample), "best_pivot_heldout": best["pivot_layer"],
                                             "best_knn_accuracy_heldout": best.get("knn_accuracy_heldout")})
    print(f"pivot_sweep: best pivot {best['pivot_layer']} ({best})")
