"""Building the map from the corpus embeddings and measuring how well it routes."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ais.atomic import load_npz
from ais.model import sha256_file
from ais.topomap import MapError, TopoMap, centroid_recall, fit_learned_router, knn_homogeneity


def load_embeddings(path: Path | str, corpus_path: Path | str) -> tuple[np.ndarray, dict]:
    """(embeddings, identity) from the embed stage, checked to be aligned with the corpus."""
    data = load_npz(path, "router embeddings", "embed")
    if sha256_file(Path(corpus_path)) != str(data["corpus_sha256"]):
        raise MapError(f"{path} was computed from a different {corpus_path}; rerun `dvc repro embed`")
    return data["embeddings"], json.loads(str(data["identity"]))


def load_importance(path: Path | str, categories: list[str], n_layers: int) -> np.ndarray:
    """The chosen normalised importance (categories x layers) from the importance stage, checked."""
    data = load_npz(path, "layer importance", "importance")
    found = [str(c) for c in data["categories"]]
    if found != categories:
        raise MapError(f"{path} has categories {found}, the corpus has {categories}; rerun `dvc repro importance`")
    if data["importance"].shape != (len(categories), n_layers):
        raise MapError(f"{path} has shape {data['importance'].shape}, expected {(len(categories), n_layers)}; "
                       "rerun `dvc repro importance`")
    return data["importance"]


def build_map(rows: list[dict], vectors: np.ndarray, identity: dict, seed: int, learned_c: float,
              importance: np.ndarray | None = None) -> TopoMap:
    """The map over the `map` split, with its learned router fitted on the same entries."""
    categories = sorted({r["category"] for r in rows})
    on_map = np.array([r["split"] == "map" for r in rows])
    labels = np.array([categories.index(r["category"]) for r in rows])
    router = fit_learned_router(vectors[on_map], labels[on_map], seed=seed, c=learned_c)
    return TopoMap(vectors[on_map], labels[on_map], categories, identity, importance, router)


def _per_second(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def routing_metrics(topo: TopoMap, rows: list[dict], vectors: np.ndarray, k: int, homogeneity_k: int):
    """(metrics dict, per-category rows): homogeneity, silhouette, centroid recall, and both
    routers' accuracy on the held-out and held-out-by-task splits, with their cost per prompt."""
    from sklearn.metrics import silhouette_score

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
    for kind in ("knn", "learned"):
        seconds = _per_second(lambda: topo.predict(queries, k, kind))
        out[f"{kind}_microseconds_per_prompt"] = round(1e6 * seconds / len(queries), 2)
    return out


def sweep_sample(rows: list[dict], per_category: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(map rows, held-out rows) for the pivot sweep: `per_category` random map prompts and the
    first `per_category // 2` of each held-out split, per category."""
    import random

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
