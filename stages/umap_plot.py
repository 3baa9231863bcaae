"""Stage `umap`: a 2-D UMAP of the map's router embeddings, coloured by category."""
import umap

from ais.params import get, load_params
from ais.plots import plot_umap
from ais.topomap import TopoMap

if __name__ == "__main__":
    params = load_params()
    topo = TopoMap.load("data/map")
    coords = umap.UMAP(n_components=2, n_neighbors=get(params, "umap.n_neighbors", int, lo=2),
                       min_dist=get(params, "umap.min_dist", float, lo=0), metric="cosine",
                       random_state=get(params, "umap.seed", int)).fit_transform(topo.embeddings)
    ident = topo.identity
    plot_umap(coords, topo.labels, topo.categories, "reports/umap.png",
              f"Router embeddings ({len(topo)} prompts, pivot layer {ident.get('pivot_layer')} "
              f"of {ident.get('n_layers')}, {ident.get('pooling')} pooling)")
    print("umap: reports/umap.png")
