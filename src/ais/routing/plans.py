"""Choosing a skip plan: router embedding -> map -> category -> its importance -> the
lowest-importance layers, from those the plan may touch.

The plan may touch only layers at or past the router's pivot (so the decoder can continue from
the router's hidden state and cache instead of recomputing them) and never a layer whose
normalised importance reaches `critical`; layer 0 is never touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ais.params import ParamsError, get
from ais.model.gating import SkipPlan

MODES = ("hard", "soft")  # what a plan does with its layers; `full` (no plan) is the third decoding mode
# where a prompt's layer scores come from, from least to most input-dependent (the adaptivity ladder):
#   global — all categories pooled; category — the routed category's importance;
#   neighbours — the mean of the k nearest map entries' own layer scores (block influence);
#   prompt — the prompt's own block influence on its prefill (the prefill runs every layer)
PLAN_KINDS = ("global", "category", "neighbours", "prompt")
OTHER_MODE = {"hard": "soft", "soft": "hard"}  # the comparison reported beside `skip.mode`


@dataclass(frozen=True)
class SkipSettings:
    """The `skip:` section of params.yaml, checked."""

    mode: str = "hard"
    plan: str = "category"
    alpha: float = 0.7
    select: str = "fraction"
    fraction: float = 0.1
    threshold: float = 0.05
    critical: float = 0.9

    @classmethod
    def from_params(cls, params: dict) -> "SkipSettings":
        return cls(
            mode=get(params, "skip.mode"),
            plan=get(params, "skip.plan"),
            alpha=get(params, "skip.alpha"),
            select=get(params, "skip.select"),
            fraction=get(params, "skip.fraction"),
            threshold=get(params, "skip.threshold"),
            critical=get(params, "skip.critical"),
        )


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
    if settings.select == "threshold" and fraction is None:
        return [i for i in candidates if importance[i] <= settings.threshold]
    n = n_layers_to_skip(settings.fraction if fraction is None else fraction, len(importance))
    return lowest_layers(importance, candidates, n)


def random_layers(n_layers: int, pivot: int, n: int, rng: np.random.Generator) -> list[int]:
    """The control: `n` layers drawn uniformly from the same range a routed plan may use."""
    pool = list(range(max(1, pivot), n_layers))
    return sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())


def make_plan(layers: list[int], mode: str, alpha: float) -> SkipPlan:
    return SkipPlan.make(hard=layers) if mode == "hard" else SkipPlan.soft_of(layers, alpha)


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
