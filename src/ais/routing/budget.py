"""Choosing a skip plan: router embedding -> map -> category -> its importance -> the
lowest-importance layers, from those the plan may touch.

The plan may touch only layers at or past the router's pivot (so the decoder can continue from
the router's hidden state and cache instead of recomputing them) and never a layer whose
normalised importance reaches `critical`; layer 0 is never touched.
"""
from __future__ import annotations

import numpy as np

from ais.params import ParamsError, get

MODES = ("hard", "soft")  # what a plan does with its layers; `full` (no plan) is the third decoding mode
OTHER_MODE = {"hard": "soft", "soft": "hard"}  # the comparison reported beside `skip.mode`


class SkipSettings:
    """The `skip:` section of params.yaml, each key read (and checked) when first used, so that a
    stage depends on exactly the keys it uses; values given here replace those of params.yaml."""

    DEFAULTS = {"mode": "hard", "plan": "category", "alpha": 0.7, "select": "fraction", "fraction": 0.1,
                "threshold": 0.05, "critical": 0.9}   # `plan`: the method (ais.methods) that chooses the layers

    def __init__(self, params: dict | None = None, **values):
        unknown = set(values) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"unknown skip settings {sorted(unknown)}")
        self._params, self._values = params, dict(values)

    @classmethod
    def from_params(cls, params: dict) -> "SkipSettings":
        return cls(params)

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in self.DEFAULTS:
            raise AttributeError(name)
        if name not in self._values:
            self._values[name] = get(self._params, f"skip.{name}") if self._params is not None else self.DEFAULTS[name]
        return self._values[name]

    def replace(self, **values) -> "SkipSettings":
        """The same settings with some values replaced."""
        return SkipSettings(self._params, **{**self._values, **values})

    def __repr__(self) -> str:
        return f"SkipSettings({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


def candidate_layers(importance: np.ndarray, pivot: int, critical: float) -> list[int]:
    """Layers a plan may skip: index >= pivot (and >= 1), normalised importance below `critical`."""
    return [i for i in range(max(1, pivot), len(importance)) if importance[i] < critical]


def n_layers_to_skip(fraction: float, n_layers: int) -> int:
    if not 0 <= fraction < 1:
        raise ParamsError(f"`skip.fraction` is {fraction!r}; it must be in [0, 1)")
    return int(round(fraction * n_layers))


def lowest_layers(importance: np.ndarray, candidates: list[int], n: int) -> list[int]:
    """The `n` candidates of lowest importance (ties: lower index first), sorted."""
    ranked = sorted(candidates, key=lambda i: (importance[i], i))
    return sorted(ranked[:n])


def select_layers(importance: np.ndarray, pivot: int, settings: SkipSettings, fraction: float | None = None) -> list[int]:
    """The layers to skip for one category's importance vector."""
    candidates = candidate_layers(importance, pivot, settings.critical)
    if fraction is None and settings.select == "threshold":  # a given fraction reads no budget rule
        return [i for i in candidates if importance[i] <= settings.threshold]
    n = n_layers_to_skip(settings.fraction if fraction is None else fraction, len(importance))
    return lowest_layers(importance, candidates, n)


def random_layers(n_layers: int, pivot: int, n: int, rng: np.random.Generator) -> list[int]:
    """The control: `n` layers drawn uniformly from the same range a routed plan may use."""
    pool = list(range(max(1, pivot), n_layers))
    return sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())


def minmax_per_category(raw: np.ndarray, protected=(0,)) -> np.ndarray:
    """Min-max per category (row) over the measured layers, to [0, 1]; protected layers and layers
    not measured (NaN: layer 0, layers below the pivot for the greedy search) are set to 1."""
    raw = np.atleast_2d(raw)
    out = np.ones_like(raw, dtype=np.float64)
    for c in range(raw.shape[0]):
        row = raw[c].astype(np.float64)
        measured = [i for i in range(len(row)) if i not in protected and np.isfinite(row[i])]
        if not measured:
            raise ValueError(f"row {c} of the importance has no measured layer")
        lo, hi = row[measured].min(), row[measured].max()
        out[c, measured] = (row[measured] - lo) / (hi - lo) if hi > lo else 0.0
    return out


def layers_from_scores(scores: np.ndarray, pivot: int, settings: SkipSettings, fraction: float | None = None) -> list[int]:
    """The layers to skip given raw per-layer scores of one prompt (higher = more influence, e.g.
    block influence): normalised per prompt as the importance is (min-max over layers past layer 0),
    then the same rule as a category's plan (past the pivot, below `critical`, the lowest fraction)."""
    return select_layers(minmax_per_category(np.asarray(scores, dtype=np.float64))[0], pivot, settings, fraction)
