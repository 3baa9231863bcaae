"""The topological map: a FAISS inner-product index over L2-normalised router embeddings
(inner product = cosine), one entry per labelled corpus prompt, plus each category's
per-layer importance and a learned (logistic-regression) router beside the k-NN vote.

On disk (a folder): index.faiss, map.npz (labels, category names, importance, learned router),
map.json (model identity, pivot, pooling, sizes). Loading checks the identity against the model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from ais.files import ArtifactError, atomic_dir, check_identity, load_npz, read_meta, save_npz, sha256_file, write_json


class MapError(ArtifactError):
    """A map that cannot be built, loaded or queried as asked."""


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); a zero or non-finite row is an error."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if not np.isfinite(vectors).all():
        bad = np.where(~np.isfinite(vectors).all(1))[0][:5].tolist()
        raise MapError(f"embedding rows {bad} contain NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        bad = np.where(norms[:, 0] == 0)[0][:5].tolist()
        raise MapError(f"embedding rows {bad} are all zeros and have no direction")
    if np.allclose(norms, 1.0, rtol=0, atol=1e-6):  # already unit: keep the bits (stable round trips)
        return vectors
    return vectors / norms


@dataclass
class TopoMap:
    """Labelled embeddings in a FAISS IndexFlatIP, with per-category importance."""

    embeddings: np.ndarray          # N x H, L2-normalised float32
    labels: np.ndarray              # N, int index into `categories`
    categories: list[str]
    identity: dict                  # model identity + router settings the embeddings came from
    importance: np.ndarray | None = None   # C x n_layers, normalised to [0, 1] (1 = critical)
    router: dict = field(default_factory=dict)  # learned router: coef (C x H), intercept (C)
    global_importance: np.ndarray | None = None  # n_layers: the same measure over all categories pooled
    prompt_scores: np.ndarray | None = None      # N x n_layers: each entry's own block influence per layer

    def __post_init__(self):
        self.embeddings = unit_rows(self.embeddings)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.embeddings):
            raise MapError(f"{len(self.embeddings)} embeddings but {len(self.labels)} labels")
        if self.identity.get("hidden_size") not in (None, self.embeddings.shape[1]):
            raise MapError(f"embeddings have width {self.embeddings.shape[1]}, "
                           f"the model's hidden size is {self.identity['hidden_size']}")
        if self.prompt_scores is not None:
            self.prompt_scores = np.asarray(self.prompt_scores, dtype=np.float32)
            if len(self.prompt_scores) != len(self.labels):
                raise MapError(f"{len(self.prompt_scores)} rows of layer scores for {len(self.labels)} entries")
        self.index = faiss.IndexFlatIP(self.embeddings.shape[1])
        self.index.add(self.embeddings)

    def __len__(self) -> int:
        return len(self.labels)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, entry indices), each Q x k, nearest first."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(self):
            raise MapError(f"k={k!r} must be an integer in 1..{len(self)} (the map's size)")
        queries = unit_rows(vectors)
        if queries.shape[1] != self.embeddings.shape[1]:
            raise MapError(f"query width {queries.shape[1]} does not match the map's {self.embeddings.shape[1]}")
        sims, idx = self.index.search(queries, int(k))
        return sims, idx

    def vote(self, sims: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Per-query category scores (Q x C): similarity-weighted votes of the neighbours."""
        scores = np.zeros((len(idx), len(self.categories)), dtype=np.float64)
        for q in range(len(idx)):
            np.add.at(scores[q], self.labels[idx[q]], np.clip(sims[q], 0, None) + 1e-6)
        return scores

    def predict_knn(self, vectors: np.ndarray, k: int) -> np.ndarray:
        """Predicted category index per query by the k-NN vote."""
        sims, idx = self.search(vectors, k)
        return self.vote(sims, idx).argmax(1)

    def predict_learned(self, vectors: np.ndarray) -> np.ndarray:
        """Predicted category index per query by the logistic-regression router."""
        if not self.router:
            raise MapError("this map has no learned router; rebuild it with `dvc repro map`")
        logits = unit_rows(vectors) @ self.router["coef"].T + self.router["intercept"]
        return logits.argmax(1)

    def predict(self, vectors: np.ndarray, k: int, router: str = "knn") -> np.ndarray:
        if router == "knn":
            return self.predict_knn(vectors, k)
        if router == "learned":
            return self.predict_learned(vectors)
        raise MapError(f"router.kind={router!r} must be 'knn' or 'learned'")

    def neighbour_scores(self, idx) -> np.ndarray:
        """The mean of some entries' own layer scores (the neighbours plan's scores)."""
        if self.prompt_scores is None:
            raise MapError("this map holds no per-entry layer scores, which the neighbours plan needs; rebuild it with "
                           "`dvc exp run -S map.prompt_scores=true` (one full forward per corpus prompt)")
        return self.prompt_scores[np.asarray(idx, dtype=np.int64)].mean(0)

    def check_model(self, identity: dict) -> None:
        """Refuse a model other than the one the map was built with."""
        check_identity(self.identity, identity, "the map", MapError)

    def save(self, folder: Path | str) -> None:
        """Write the map folder atomically."""
        arrays = {"labels": self.labels, "categories": np.array(self.categories)}
        if self.importance is not None:
            arrays["importance"] = np.asarray(self.importance, dtype=np.float32)
        if self.global_importance is not None:
            arrays["global_importance"] = np.asarray(self.global_importance, dtype=np.float32)
        if self.prompt_scores is not None:
            arrays["prompt_scores"] = self.prompt_scores
        for key, value in self.router.items():
            arrays[f"router_{key}"] = value
        with atomic_dir(folder) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            save_npz(tmp / "map.npz", **arrays)
            write_json(tmp / "map.json", {"identity": self.identity, "n_entries": len(self),
                                          "categories": self.categories,
                                          "has_importance": self.importance is not None,
                                          "has_learned_router": bool(self.router)})

    @classmethod
    def load(cls, folder: Path | str, model_identity: dict | None = None) -> "TopoMap":
        """Read a map folder; with `model_identity`, refuse a map built for another model."""
        folder = Path(folder)
        meta = read_meta(folder / "map.json", "map", "map", MapError)
        arrays = load_npz(folder / "map.npz", "map arrays", "map", MapError)
        try:
            index = faiss.read_index(str(folder / "index.faiss"))
        except RuntimeError as err:
            raise MapError(f"{folder / 'index.faiss'} is missing or corrupt; rerun `dvc repro -f map`") from err
        router = {k[len("router_"):]: v for k, v in arrays.items() if k.startswith("router_")}
        if index.ntotal != len(arrays["labels"]):
            raise MapError(f"{folder / 'index.faiss'} holds {index.ntotal} entries but map.npz "
                           f"{len(arrays['labels'])} labels; rerun `dvc repro -f map`")
        topo = cls(index.reconstruct_n(0, index.ntotal), arrays["labels"], [str(c) for c in arrays["categories"]],
                   meta["identity"], arrays.get("importance"), router, arrays.get("global_importance"),
                   arrays.get("prompt_scores"))
        if model_identity is not None:
            topo.check_model(model_identity)
        return topo


def knn_homogeneity(topo: TopoMap, k: int = 10) -> float:
    """Mean fraction of each entry's k nearest other entries that share its category."""
    sims, idx = topo.search(topo.embeddings, k + 1)
    same = topo.labels[idx[:, 1:]] == topo.labels[:, None]
    return float(same.mean())


def centroid_recall(topo: TopoMap, k: int = 10) -> dict[str, float]:
    """Per category: fraction of the k entries nearest its centroid that belong to it."""
    out = {}
    for c, name in enumerate(topo.categories):
        centroid = topo.embeddings[topo.labels == c].mean(0)
        _, idx = topo.search(centroid, k)
        out[name] = float((topo.labels[idx[0]] == c).mean())
    return out


def fit_learned_router(embeddings: np.ndarray, labels: np.ndarray, c: float = 1.0) -> dict:
    """Multinomial logistic regression on standardised, normalised embeddings, folded back into
    one linear map {coef (C x H), intercept (C)} that applies to normalised embeddings. The fit runs
    on one BLAS thread: lbfgs has no random state, but its sums round by the BLAS's thread split (with
    2 threads the coefficients moved by up to 3.7e-4), and the map must have the same bytes on any
    machine and thread count."""
    from sklearn.linear_model import LogisticRegression  # here: scikit-learn's import costs every stage a second
    from sklearn.preprocessing import StandardScaler

    x = unit_rows(embeddings)
    with threadpool_limits(limits=1):
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=c, max_iter=3000)
        clf.fit(scaler.transform(x), labels)
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # two classes: sklearn keeps one row
        coef, intercept = np.vstack([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    folded = coef / scale
    return {"coef": folded.astype(np.float32),
            "intercept": (intercept - folded @ scaler.mean_).astype(np.float32)}


def load_embeddings(path: Path | str, corpus_path: Path | str, scores: bool = False):
    """(embeddings, identity) from the embed stage, checked to be aligned with the corpus; with
    `scores`, (embeddings, identity, each prompt's layer scores, or None where they were not kept)."""
    data = load_npz(path, "router embeddings", "embed")
    if sha256_file(Path(corpus_path)) != str(data["corpus_sha256"]):
        raise MapError(f"{path} was computed from a different {corpus_path}; rerun `dvc repro embed`")
    identity = json.loads(str(data["identity"]))
    if not scores:
        return data["embeddings"], identity
    found = data.get("prompt_scores")
    if found is not None and found.shape != (len(data["embeddings"]), identity["n_layers"]):
        raise MapError(f"{path} has layer scores of shape {found.shape}, expected "
                       f"{(len(data['embeddings']), identity['n_layers'])}; rerun `dvc repro -f embed`")
    return data["embeddings"], identity, found


def load_importance(path: Path | str, categories: list[str], n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """The chosen normalised importance (categories x layers) from the importance stage, checked,
    and the same measure over all categories pooled (layers), which the global plan uses."""
    data = load_npz(path, "layer importance", "importance")
    found = [str(c) for c in data["categories"]]
    if found != categories:
        raise MapError(f"{path} has categories {found}, the corpus has {categories}; rerun `dvc repro importance`")
    if data["importance"].shape != (len(categories), n_layers):
        raise MapError(f"{path} has shape {data['importance'].shape}, expected {(len(categories), n_layers)}; "
                       "rerun `dvc repro importance`")
    if data.get("global_importance") is None or data["global_importance"].shape != (n_layers,):
        raise MapError(f"{path} has no pooled (global) importance of {n_layers} layers; rerun `dvc repro importance`")
    return data["importance"], data["global_importance"]


def build_map(rows: list[dict], vectors: np.ndarray, identity: dict, learned_c: float,
              importance: np.ndarray | None = None, global_importance: np.ndarray | None = None,
              prompt_scores: np.ndarray | None = None) -> TopoMap:
    """The map over the `map` split, with its learned router fitted on the same entries (and, given
    every corpus prompt's layer scores, the map entries' own)."""
    categories = sorted({r["category"] for r in rows})
    on_map = np.array([r["split"] == "map" for r in rows])
    labels = np.array([categories.index(r["category"]) for r in rows])
    router = fit_learned_router(vectors[on_map], labels[on_map], c=learned_c)
    return TopoMap(vectors[on_map], labels[on_map], categories, identity, importance, router, global_importance,
                   None if prompt_scores is None else prompt_scores[on_map])
