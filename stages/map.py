"""Stage `map`: the FAISS topological map over the map split -> data/map/, with routing metrics and
how well a prompt's own block influence tracks the single-layer KL the category plans use."""
from pathlib import Path

import numpy as np

from ais.files import load_npz, write_csv, write_json
from ais.params import get, load_params
from ais.routing.accuracy import router_cost, routing_metrics, score_agreement
from ais.routing.corpus import read_corpus
from ais.routing.topomap import build_map, load_embeddings, load_importance

CORPUS = Path("data/corpus.jsonl")

if __name__ == "__main__":
    params = load_params()
    rows = read_corpus(CORPUS)
    vectors, identity, scores = load_embeddings("data/embeddings.npz", CORPUS, scores=True)
    importance, pooled = load_importance("data/importance.npz", sorted({r["category"] for r in rows}), identity["n_layers"])
    topo = build_map(rows, vectors, identity, learned_c=get(params, "map.learned_c"), importance=importance,
                     global_importance=pooled, prompt_scores=scores)
    k = get(params, "router.k", hi=len(topo))
    metrics, per_category = routing_metrics(topo, rows, vectors, k, get(params, "map.homogeneity_k"))
    raw_single = load_npz("data/importance.npz", "layer importance", "importance").get("raw_single")
    if scores is not None and raw_single is not None and np.isfinite(raw_single[:, identity["pivot_layer"]:]).all():
        metrics["block_influence_vs_single_kl_spearman"] = score_agreement(topo, raw_single, identity["pivot_layer"])
    topo.save("data/map")
    write_json("reports/map.json", metrics)
    write_csv("reports/routing_per_category.csv", per_category)
    held = vectors[np.array([r["split"] == "heldout" for r in rows])]
    write_json("reports/router_cost.json", router_cost(topo, held if len(held) else vectors[:1], k))
    print("map: " + ", ".join(f"{key} {value}" for key, value in metrics.items() if not isinstance(value, dict)))
