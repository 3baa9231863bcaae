"""Stage `umap`: a 2-D UMAP of the map split's router embeddings, coloured by category."""
from pathlib import Path

import numpy as np
import umap

from ais.routing.corpus import read_corpus
from ais.params import get, load_params
from ais.report.plots import plot_umap
from ais.routing.topomap import load_embeddings

CORPUS = Path("data/corpus.jsonl")

if __name__ == "__main__":
    params = load_params()
    rows = read_corpus(CORPUS)
    vectors, identity = load_embeddings("data/embeddings.npz", CORPUS)
    on_map = np.array([r["split"] == "map" for r in rows])
    categories = sorted({r["category"] for r in rows})
    labels = np.array([categories.index(r["category"]) for r, m in zip(rows, on_map) if m])
    coords = umap.UMAP(n_components=2, n_neighbors=get(params, "umap.n_neighbors"),
                       min_dist=get(params, "umap.min_dist"), metric="cosine",
                       random_state=get(params, "umap.seed")).fit_transform(vectors[on_map])
    plot_umap(coords, labels, categories, "reports/umap.png",
              f"Router embeddings ({int(on_map.sum())} map prompts, pivot layer {identity['pivot_layer']} "
              f"of {identity['n_layers']}, {identity['pooling']} pooling)")
    print("umap: reports/umap.png")
