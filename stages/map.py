"""Stage `map`: the FAISS topological map over the map split -> data/map/, with routing metrics."""
from pathlib import Path

import numpy as np

from ais.files import write_json
from ais.routing.corpus import read_corpus
from ais.params import get, load_params
from ais.files import write_csv
from ais.routing.accuracy import router_cost, routing_metrics
from ais.routing.topomap import build_map, load_embeddings, load_importance

CORPUS = Path("data/corpus.jsonl")

if __name__ == "__main__":
    params = load_params()
    rows = read_corpus(CORPUS)
    vectors, identity = load_embeddings("data/embeddings.npz", CORPUS)
    importance, pooled = load_importance("data/importance.npz", sorted({r["category"] for r in rows}), identity["n_layers"])
    topo = build_map(rows, vectors, identity, learned_c=get(params, "map.learned_c"), importance=importance,
                     global_importance=pooled)
    k = get(params, "router.k", hi=len(topo))
    metrics, per_category = routing_metrics(topo, rows, vectors, k, get(params, "map.homogeneity_k"))
    topo.save("data/map")
    write_json("reports/map.json", metrics)
    write_csv("reports/routing_per_category.csv", per_category)
    held = vectors[np.array([r["split"] == "heldout" for r in rows])]
    write_json("reports/router_cost.json", router_cost(topo, held if len(held) else vectors[:1], k))
    print("map: " + ", ".join(f"{key} {value}" for key, value in metrics.items() if not isinstance(value, dict)))
