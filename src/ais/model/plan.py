"""A skip plan: what each decoder layer does for one request.

Per layer, one action:
  run              — the layer as transformers runs it;
  hard skip        — out = x: the layer never runs and never reads or writes its keys and values;
  soft skip        — out = a * layer(x) + (1 - a) * x (quality kept, no compute saved);
  skip attention   — the attention block is skipped (no keys or values), the MLP block runs;
  skip MLP         — the attention block runs, the MLP block is skipped;
  fill             — out = x, but the layer's keys and values for the new positions are still written,
                     from its input (the per-token mode's complete cache).
Layers not in the plan run, so the empty plan is the plain transformers model. Layer 0 is never
touched: every model measured needs it most (SmolLM2-135M: KL 9.2 when it alone is skipped), and
plans protect it.

The per-token gate (`DepthGate`, mode `dynamic`) decides while decoding instead: CALM's hidden-state
saturation (Schuster et al. 2022, "Confident Adaptive Language Modeling", the state-propagation
measure). After every layer from `min_layer - 1` on, a token whose state entering and leaving the
layer have cosine similarity >= `threshold` exits: it skips every later layer in `candidates` (None:
every later layer, CALM's early exit) and still runs the others. A skipped layer still writes the
token's keys and values, from its state at that layer's input (CALM's state propagation; FlexiDepth
keeps its cache complete the same way), so every later token attends to every earlier position at
every layer. The prompt's prefill runs every layer; only decoding is adaptive. The engine applies the
gate row by row: each row decides alone, and a layer no row runs is not run.
"""
from __future__ import annotations

from dataclasses import dataclass

RUN, SKIP, FILL, SKIP_ATTENTION, SKIP_MLP = 0, 1, 2, 3, 4  # per-layer action codes (the engine's)


class PlanError(ValueError):
    """A skip plan that cannot be applied to this model."""


def _indices(values, what: str) -> frozenset[int]:
    values = list(values)
    for idx in values:
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise PlanError(f"{what} layer index {idx!r} is not an integer")
    return frozenset(int(i) for i in values)


@dataclass(frozen=True)
class SkipPlan:
    """Which layers to bypass (`hard`), blend with weight alpha (`soft`), run without their attention
    block (`attention`) or MLP block (`mlp`), or bypass while writing their keys and values (`fill`)."""

    hard: frozenset[int] = frozenset()
    soft: tuple[tuple[int, float], ...] = ()
    attention: frozenset[int] = frozenset()
    mlp: frozenset[int] = frozenset()
    fill: frozenset[int] = frozenset()

    @classmethod
    def make(cls, hard=(), soft=None, attention=(), mlp=(), fill=()) -> "SkipPlan":
        """Build a plan from iterables of layer indices and a {layer: alpha} mapping."""
        soft = dict(soft or {})
        _indices(soft, "soft-skip")
        for idx, alpha in soft.items():
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
                raise PlanError(f"soft-skip alpha for layer {idx} is {alpha!r}, not a number")
        return cls(_indices(hard, "hard-skip"), tuple(sorted((int(i), float(a)) for i, a in soft.items())),
                   _indices(attention, "attention-skip"), _indices(mlp, "MLP-skip"), _indices(fill, "fill"))

    @classmethod
    def soft_of(cls, layers, alpha: float) -> "SkipPlan":
        """The same layers soft-skipped with one alpha."""
        return cls.make(soft={int(i): alpha for i in layers})

    @property
    def soft_map(self) -> dict[int, float]:
        return dict(self.soft)

    @property
    def layers(self) -> list[int]:
        """Every layer whose whole output the plan changes (hard, soft, fill), sorted; sub-layer skips
        are in `blocks`."""
        return sorted(self.hard | set(self.soft_map) | self.fill)

    @property
    def blocks(self) -> int:
        """Skipped attention and MLP blocks, each counted once (a hard-skipped layer counts as two)."""
        return 2 * len(self.hard | self.fill) + len(self.attention) + len(self.mlp)

    @property
    def touched(self) -> list[int]:
        """Every layer the plan changes in any way, sorted."""
        return sorted(set(self.layers) | self.attention | self.mlp)

    def is_empty(self) -> bool:
        return not self.touched

    def action(self, layer: int) -> tuple[int, float]:
        """(action code, alpha) of one layer: alpha is 1.0 except for a soft-skipped layer."""
        if layer in self.hard:
            return SKIP, 1.0
        if layer in self.fill:
            return FILL, 1.0
        if layer in self.attention:
            return SKIP_ATTENTION, 1.0
        if layer in self.mlp:
            return SKIP_MLP, 1.0
        for idx, alpha in self.soft:
            if idx == layer:
                return RUN, alpha
        return RUN, 1.0

    def validate(self, n_layers: int) -> "SkipPlan":
        """Raise PlanError naming the bad value; return self when the plan is usable."""
        soft = self.soft_map
        for idx in self.touched:
            if not 0 <= idx < n_layers:
                raise PlanError(f"layer index {idx} is out of range: the model has layers 0..{n_layers - 1}")
        if 0 in self.touched:
            raise PlanError("layer 0 cannot be skipped: every plan protects it (the model's most important layer; "
                            "SmolLM2-135M's KL when it alone is skipped is 9.2)")
        groups = {"hard": self.hard, "soft": set(soft), "attention": self.attention, "mlp": self.mlp, "fill": self.fill}
        names = list(groups)
        for a in range(len(names)):
            for b in range(a + 1, len(names)):
                both = groups[names[a]] & groups[names[b]]
                if both:
                    raise PlanError(f"layers {sorted(both)} are both {names[a]}- and {names[b]}-skipped; "
                                    "choose one action per layer")
        for idx, alpha in soft.items():
            if not 0.0 < alpha < 1.0 or alpha != alpha:
                raise PlanError(f"soft-skip alpha {alpha} for layer {idx} must be in (0, 1): "
                                "alpha=1 is no skip, alpha=0 is a hard skip")
        return self

    def describe(self) -> str:
        parts = []
        if self.hard:
            parts.append(f"hard {sorted(self.hard)}")
        if self.soft:
            parts.append("soft " + ", ".join(f"{i}:{a:g}" for i, a in self.soft))
        if self.attention:
            parts.append(f"attention {sorted(self.attention)}")
        if self.mlp:
            parts.append(f"mlp {sorted(self.mlp)}")
        if self.fill:
            parts.append(f"fill {sorted(self.fill)}")
        return "; ".join(parts) or "no skip"


NO_SKIP = SkipPlan()


def make_plan(layers, mode: str, alpha: float) -> SkipPlan:
    """The layers hard-skipped (`hard`) or blended with `alpha` (`soft`)."""
    if mode == "hard":
        return SkipPlan.make(hard=layers)
    if mode == "soft":
        return SkipPlan.soft_of(layers, alpha)
    raise PlanError(f"mode={mode!r} must be 'hard' or 'soft'")


def decoder_layers(model):
    """The decoder layer list of a Llama-family causal LM."""
    return model.model.layers


@dataclass(frozen=True)
class DepthGate:
    """When a token stops running layers: once a layer's input and output have cosine similarity
    >= `threshold` (> 1 never fires), at the earliest after layer `min_layer - 1` (layers below
    `min_layer` always run). From then on the token skips every later layer in `candidates` (None:
    every later layer, CALM's early exit) and still runs the others."""

    threshold: float
    min_layer: int = 1
    candidates: frozenset[int] | None = None

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not self.threshold > 0:
            raise ValueError(f"dynamic threshold {self.threshold!r} must be a number > 0 (> 1 never exits)")
        if isinstance(self.min_layer, bool) or not isinstance(self.min_layer, int) or self.min_layer < 1:
            raise ValueError(f"dynamic min_layer {self.min_layer!r} must be an integer >= 1 (layer 0 always runs)")
        if self.candidates is not None:
            object.__setattr__(self, "candidates", frozenset(int(i) for i in self.candidates))
            if any(i < self.min_layer for i in self.candidates):
                raise ValueError(f"dynamic candidates {sorted(self.candidates)} must be layers >= min_layer {self.min_layer}")

    def skippable(self, layer: int) -> bool:
        """Whether an exited token skips `layer`."""
        return layer >= self.min_layer if self.candidates is None else layer in self.candidates

    def describe(self, n_layers: int) -> str:
        which = "every later layer" if self.candidates is None else f"later layers of {sorted(self.candidates)}"
        return (f"per token: exit once cos(layer input, output) >= {self.threshold} from layer {self.min_layer}, "
                f"then skip {which} (of {n_layers})")


NEVER = DepthGate(threshold=2.0)  # the gate that never fires: plain greedy decoding
