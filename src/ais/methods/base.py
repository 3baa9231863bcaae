"""What every method plans for (`Setup`: the map, the pivot, the budget rule) and what it may
calibrate on (`Calibration`: prompts, the full model's continuations, a scorer, measured costs)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ais.files import load_npz
from ais.methods import Budget
from ais.model.plan import SkipPlan, make_plan
from ais.routing.budget import SkipSettings, candidate_layers, layers_from_scores, lowest_layers, select_layers
from ais.routing.topomap import TopoMap


@dataclass
class Setup:
    """The system a method plans for: the map (with each category's importance and the pooled one),
    the router's pivot (plans skip only layers at or past it, never layer 0), the budget rule of
    `skip.*`, and where the importance stage's full output is (for methods that need more of it)."""

    topo: TopoMap
    pivot: int
    settings: SkipSettings
    n_layers: int
    seed: int = 0
    importance_path: Path | None = None
    params: dict = field(default_factory=dict)   # params.yaml, for methods with settings of their own
    root: Path = Path(".")                       # where the pipeline's artifacts are (data/...)
    k: int = 10                                  # the router's neighbours (`router.k`)
    _importance: dict | None = field(default=None, repr=False)

    def param(self, dotted: str, default=None):
        """A method's own setting from params.yaml (checked by its schema), or `default` without params."""
        if not self.params:
            return default
        from ais.params import get
        return get(self.params, dotted)

    def budget(self, layers: int | None = None, mode: str | None = None) -> Budget:
        """A budget in the settings' mode (and alpha, read only for a soft plan): `layers` skipped, or the settings' rule."""
        mode = mode or self.settings.mode
        alpha = self.settings.alpha if mode == "soft" else Budget.alpha
        return Budget(layers, mode, alpha, None if layers is None else float(layers))

    def pooled_importance(self) -> np.ndarray:
        """The importance over all categories pooled (maps without it: the mean of the categories')."""
        topo = self.topo
        return topo.global_importance if topo.global_importance is not None else topo.importance.mean(0)

    def category_importance(self, category: str) -> np.ndarray:
        return self.topo.importance[self.topo.categories.index(category)]

    def skippable(self) -> list[int]:
        """The layers any plan may skip, whatever their importance: at or past the pivot, never layer 0."""
        return list(range(max(1, self.pivot), self.n_layers))

    def lowest(self, importance: np.ndarray, budget: Budget, below_pivot: bool = False) -> list[int]:
        """The budget's layers of lowest normalised importance (the params' rule where the budget gives no count)."""
        pivot = 1 if below_pivot else self.pivot
        if budget.layers is None:
            return select_layers(importance, pivot, self.settings)
        return lowest_layers(importance, candidate_layers(importance, pivot, self.settings.critical), budget.layers)

    def from_scores(self, scores: np.ndarray, budget: Budget) -> list[int]:
        """The budget's layers from raw per-layer scores (higher = more influence), normalised per prompt."""
        return layers_from_scores(scores, self.pivot, self.settings, budget.fraction(self.n_layers))

    @staticmethod
    def plan_of(layers, budget: Budget) -> SkipPlan:
        return make_plan(sorted(layers), budget.mode, budget.alpha)

    def artifact(self, relative: str) -> Path:
        """A pipeline artifact's path (a method's own data, e.g. data/plan_map)."""
        return Path(self.root) / relative

    def count(self) -> int:
        """The layer count of the params' budget rule (`skip.fraction` of the layers)."""
        from ais.routing.budget import n_layers_to_skip
        return n_layers_to_skip(self.settings.fraction, self.n_layers)

    def importance_data(self) -> dict:
        """The importance stage's whole output (data/importance.npz), read once."""
        if self._importance is None:
            if self.importance_path is None:
                raise ValueError("this method needs the importance stage's output (data/importance.npz), "
                                 "which this setup was not given")
            self._importance = load_npz(self.importance_path, "layer importance", "importance")
        return self._importance


@dataclass
class Calibration:
    """Calibration prompts (the `importance` split, never evaluated) as a method may use them:
    `engine` and `tokenizer`, the prompts by category, `references` (the full model's continuations,
    `ais.evaluation.quality.Reference` rows: ids, mask, scored columns), `score(plans)` (the mean
    top-1 agreement and KL of each plan over every calibration prompt, decode-time), and `costs`
    (the engine's measured decode seconds per block: `attention@i`, `mlp@i`, `layer` (the mean layer))."""

    engine: object
    tokenizer: object
    prompts: dict[str, list[str]]
    references: list
    score: Callable[[list[SkipPlan]], list[dict]]
    costs: dict[str, float] = field(default_factory=dict)
