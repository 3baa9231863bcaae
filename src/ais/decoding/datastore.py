"""The suffix drafter's datastore (stage `datastore`): the full model's greedy replies to map prompts,
with the prompts' router embeddings, so that a request's drafts search first the replies to its
nearest map prompts (the topological map picks the shard), then every reply.

On disk (a folder): replies.npz (tokens: every reply concatenated; offsets; entries: the map
indices; embeddings: their unit router embeddings) and datastore.json (the model identity and counts;
no clock, so the same bytes on every run)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ais.decoding.suffix import SuffixAutomaton
from ais.files import atomic_dir, check_identity, load_npz, read_meta, save_npz, write_json
from ais.routing.topomap import MapError, unit_rows

FILE = "data/datastore"


class Datastore:
    """Replies by map entry, searchable by router embedding."""

    def __init__(self, replies: list[list[int]], embeddings: np.ndarray, entries, identity: dict):
        if len(replies) != len(embeddings):
            raise MapError(f"{len(replies)} replies but {len(embeddings)} embeddings")
        self.replies = [list(map(int, r)) for r in replies]
        self.embeddings = unit_rows(np.asarray(embeddings, dtype=np.float32)) if len(replies) else np.zeros((0, 1))
        self.entries = np.asarray(entries, dtype=np.int64)
        self.identity = identity
        self._whole: SuffixAutomaton | None = None

    def __len__(self) -> int:
        return len(self.replies)

    @staticmethod
    def automaton(replies: list[list[int]]) -> SuffixAutomaton:
        """One automaton over several replies, a distinct separator after each (no match crosses one)."""
        a = SuffixAutomaton()
        for i, reply in enumerate(replies):
            for token in reply:
                a.extend(token)
            a.extend(-1 - i)
        return a

    def whole(self) -> SuffixAutomaton:
        """The automaton over every reply (built once)."""
        if self._whole is None:
            self._whole = self.automaton(self.replies)
        return self._whole

    def nearest(self, embedding: np.ndarray, k: int) -> list[int]:
        """Indices of the k replies whose prompts are nearest the embedding (cosine), nearest first."""
        if not len(self) or k <= 0:
            return []
        sims = self.embeddings @ unit_rows(np.asarray(embedding, dtype=np.float32).reshape(1, -1))[0]
        return np.argsort(-sims, kind="stable")[:k].tolist()

    def sources(self, embedding: np.ndarray | None, k: int) -> list[SuffixAutomaton]:
        """What the suffix drafter searches after the request's own context: the replies to its k
        nearest map prompts, then every reply ([] for an empty datastore)."""
        if not len(self):
            return []
        near = [] if embedding is None else self.nearest(embedding, k)
        return ([self.automaton([self.replies[i] for i in near])] if near else []) + [self.whole()]

    def save(self, folder: Path | str, extra: dict | None = None) -> None:
        offsets = np.cumsum([0] + [len(r) for r in self.replies]).astype(np.int64)
        tokens = np.array([t for r in self.replies for t in r], dtype=np.int64)
        with atomic_dir(folder) as tmp:
            save_npz(tmp / "replies.npz", tokens=tokens, offsets=offsets, entries=self.entries,
                     embeddings=self.embeddings.astype(np.float32))
            write_json(tmp / "datastore.json", {"identity": self.identity, "replies": len(self),
                                                "tokens": int(len(tokens)), **(extra or {})})

    @classmethod
    def load(cls, folder: Path | str, model_identity: dict | None = None) -> "Datastore":
        folder = Path(folder)
        meta = read_meta(folder / "datastore.json", "datastore", "datastore", MapError)
        if model_identity is not None:
            check_identity(meta["identity"], model_identity, "the datastore", MapError)
        data = load_npz(folder / "replies.npz", "datastore replies", "datastore", MapError)
        offsets, tokens = data["offsets"], data["tokens"]
        replies = [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
        return cls(replies, data["embeddings"], data["entries"], meta["identity"])
