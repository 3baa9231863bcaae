"""How well the map routes: homogeneity, silhouette, both routers' accuracy and cost, and the
pivot-layer sweep."""
from __future__ import annotations

import random

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import silhouette_score

from ais.device import time_interleaved
from ais.routing.topomap import TopoMap, centroid_recall, knn_homogeneity


def routing_metrics(topo: TopoMap, rows: list[dict], vectors: np.ndarray, k: int, homogeneity_k: int):
    """(metrics dict, per-category rows): homogeneity, silhouette, centroid recall, and both
    routers' accuracy on the held-out and held-out-by-task splits, with their cost per prompt."""
    recall = centroid_recall(topo, homogeneity_k)
    metrics = {
        "n_map": len(topo), "n_categories": len(topo.categories), "chance": round(1 / len(topo.categories), 4),
        "knn_homogeneity": round(knn_homogeneity(topo, homogeneity_k), 4),
        "homogeneity_k": homogeneity_k,
        "silhouette_cosine": round(float(silhouette_score(topo.embeddings, topo.labels, metric="cosine")), 4),
        "centroid_recall": {c: round(v, 2) for c, v in recall.items()},
        "categories_with_centroid_recall_ge_0.7": int(sum(v >= 0.7 for v in recall.values())),
        "k": k,
    }
    table = {c: {"category": c} for c in topo.categories}
    for split in ("heldout", "heldout_task"):
        mask = np.array([r["split"] == split for r in rows])
        if not mask.any():
            continue
        truth = np.array([topo.categories.index(r["category"]) for r, m in zip(rows, mask) if m])
        for kind in ("knn", "learned"):
            pred = topo.predict(vectors[mask], k, kind)
            metrics[f"{kind}_accuracy_{split}"] = round(float((pred == truth).mean()), 4)
            metrics[f"n_{split}"] = int(mask.sum())
            for c, name in enumerate(topo.categories):
                sel = truth == c
                table[name][f"{kind}_{split}"] = round(float((pred[sel] == c).mean()), 4) if sel.any() else None
    return metrics, list(table.values())


def router_cost(topo: TopoMap, queries: np.ndarray, k: int) -> dict:
    """Median microseconds per prompt of each router's lookup (the router forward not included)."""
    out = {"n_queries": len(queries)}
    seconds = time_interleaved({kind: (lambda kind=kind: topo.predict(queries, k, kind)) for kind in ("knn", "learned")},
                               "cpu", 1, 5)
    for kind, times in seconds.items():
        out[f"{kind}_microseconds_per_prompt"] = round(1e6 * float(np.median(times)) / len(queries), 2)
    return out


def sweep_sample(rows: list[dict], per_category: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(map rows, held-out rows) for the pivot sweep: `per_category` random map prompts and the
    first `per_category // 2` of each held-out split, per category."""
    rng = random.Random(seed)
    categories = sorted({r["category"] for r in rows})
    sample, held = [], []
    for c in categories:
        on_map = [r for r in rows if r["split"] == "map" and r["category"] == c]
        sample += rng.sample(on_map, min(per_category, len(on_map)))
    for c in categories:
        for split in ("heldout", "heldout_task"):
            held += [r for r in rows if r["split"] == split and r["category"] == c][:per_category // 2]
    return sample, held


def pivot_sweep(layers: np.ndarray, sample: list[dict], held: list[dict], k: int) -> list[dict]:
    """k-NN routing accuracy of the held-out rows at every pivot, from pooled states of every
    layer (n_layers x rows x hidden, map rows first)."""
    categories = sorted({r["category"] for r in sample + held})
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
    return table


def score_agreement(topo: TopoMap, single_kl: np.ndarray, pivot: int) -> dict:
    """Does a prompt's block influence track the single-layer KL the category plans use? Per category,
    the Spearman rank correlation over the layers past the pivot between the mean block influence of
    its map entries and its single-layer KL (the importance stage's), and the mean over categories."""
    layers = list(range(max(1, pivot), single_kl.shape[1]))
    out = {}
    for c, name in enumerate(topo.categories):
        influence = topo.prompt_scores[topo.labels == c].mean(0)
        out[name] = round(float(spearmanr(influence[layers], single_kl[c, layers]).statistic), 4)
    return {"per_category": out, "mean": round(float(np.mean(list(out.values()))), 4),
            "layers": f"{layers[0]}..{layers[-1]}"}
