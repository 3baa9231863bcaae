"""The plan-defined map: categories defined by which plan works instead of by task label.

Per-prompt plans, found by the greedy layer search on map prompts, are clustered into K candidate
plans per layer budget; each searched map entry keeps its candidate. A new prompt gets its candidate
by the k-NN vote over its router embedding among those entries (or, as a second router, by a
logistic regression trained on the candidate labels): one lookup, like the category plan, no extra
forward at request time.

On disk (a folder): candidates.npz (the entries' map indices, their unit embeddings, per budget n:
labels_<n>, candidates_<n> (K x n layers), the learned router coef_<n> / intercept_<n>) and
candidates.json (the model identity, the budgets, K)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ais.files import atomic_dir, check_identity, load_npz, read_meta, save_npz, write_json
from ais.routing.topomap import MapError, fit_learned_router, unit_rows


class CandidatePlans:
    """Searched map entries with their candidate plan per budget."""

    def __init__(self, entries: np.ndarray, embeddings: np.ndarray, labels: dict[int, np.ndarray],
                 candidates: dict[int, np.ndarray], identity: dict, routers: dict[int, dict] | None = None):
        self.entries = np.asarray(entries, dtype=np.int64)
        self.embeddings = unit_rows(embeddings)
        self.labels = {int(n): np.asarray(v, dtype=np.int64) for n, v in labels.items()}
        self.candidates = {int(n): np.asarray(v, dtype=np.int64) for n, v in candidates.items()}
        self.identity = identity
        self.routers = routers if routers is not None else {
            n: fit_learned_router(self.embeddings, labels, 1.0) for n, labels in self.labels.items()
            if len(set(labels.tolist())) > 1}

    @property
    def budgets(self) -> list[int]:
        return sorted(self.candidates)

    def label(self, embedding: np.ndarray, n: int, k: int, router: str = "knn") -> int:
        """The candidate a request gets at budget n: the similarity-weighted vote of its k nearest
        searched entries, or the learned router's choice."""
        if n not in self.candidates:
            raise MapError(f"the plan map has candidates for {self.budgets} skipped layers, not {n}: rebuild it "
                           "with `dvc repro plan_map` after adding the fraction to plan_map.fractions")
        labels = self.labels[n]
        query = unit_rows(embedding)[0]
        if router == "learned" and n in self.routers:
            classes = np.unique(labels)  # the regression's rows: the candidates some entry has, in order
            return int(classes[np.argmax(query @ self.routers[n]["coef"].T + self.routers[n]["intercept"])])
        sims = self.embeddings @ query
        nearest = np.argsort(-sims, kind="stable")[:min(k, len(sims))]
        votes = np.zeros(len(self.candidates[n]))
        np.add.at(votes, labels[nearest], np.clip(sims[nearest], 0, None) + 1e-6)
        return int(np.argmax(votes))

    def plan_layers(self, embedding: np.ndarray, n: int, k: int, router: str = "knn") -> list[int]:
        label = self.label(embedding, n, k, router)
        return sorted(int(i) for i in self.candidates[n][label])

    def save(self, folder: Path | str) -> None:
        arrays = {"entries": self.entries, "embeddings": self.embeddings}
        for n in self.budgets:
            arrays[f"labels_{n}"] = self.labels[n]
            arrays[f"candidates_{n}"] = self.candidates[n]
            if n in self.routers:
                arrays[f"coef_{n}"] = self.routers[n]["coef"]
                arrays[f"intercept_{n}"] = self.routers[n]["intercept"]
        with atomic_dir(folder) as tmp:
            save_npz(tmp / "candidates.npz", **arrays)
            write_json(tmp / "candidates.json", {"identity": self.identity, "budgets": self.budgets,
                                                 "k": {str(n): len(self.candidates[n]) for n in self.budgets},
                                                 "entries": len(self.entries)})

    @classmethod
    def load(cls, folder: Path | str, model_identity: dict | None = None) -> "CandidatePlans":
        folder = Path(folder)
        meta = read_meta(folder / "candidates.json", "plan map", "plan_map", MapError)
        data = load_npz(folder / "candidates.npz", "plan map arrays", "plan_map", MapError)
        if model_identity is not None:
            check_identity(meta["identity"], model_identity, "the plan map", MapError)
        budgets = [int(n) for n in meta["budgets"]]
        routers = {n: {"coef": data[f"coef_{n}"], "intercept": data[f"intercept_{n}"]} for n in budgets
                   if f"coef_{n}" in data}
        return cls(data["entries"], data["embeddings"], {n: data[f"labels_{n}"] for n in budgets},
                   {n: data[f"candidates_{n}"] for n in budgets}, meta["identity"], routers)
