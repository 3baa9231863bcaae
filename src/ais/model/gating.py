"""The skipper: hard and soft layer skipping by gating each decoder layer in place.

A layer in a plan keeps its module and its index; only its `forward` is wrapped:
  hard skip:  out = x                       (the layer never runs: real compute saved)
  soft skip:  out = a * layer(x) + (1-a) * x (quality kept, no saving)
Layers not in the plan are untouched, so the empty plan is the plain transformers model.

Layer 0 is never skipped: the KV cache reads the sequence length and mask sizes from
layer 0, so bypassing it silently corrupts cached generation (measured; see docs/stack.md).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


class PlanError(ValueError):
    """A skip plan that cannot be applied to this model."""


@dataclass(frozen=True)
class SkipPlan:
    """Which layers to bypass (`hard`) and which to blend with weight alpha (`soft`)."""

    hard: frozenset[int] = frozenset()
    soft: tuple[tuple[int, float], ...] = ()

    @classmethod
    def make(cls, hard=(), soft=None) -> "SkipPlan":
        """Build a plan from any iterable of hard indices and a {layer: alpha} mapping."""
        soft = dict(soft or {})
        for idx in list(hard) + list(soft):
            if isinstance(idx, bool) or not isinstance(idx, int):
                raise PlanError(f"layer index {idx!r} is not an integer")
        for idx, alpha in soft.items():
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
                raise PlanError(f"soft-skip alpha for layer {idx} is {alpha!r}, not a number")
        return cls(frozenset(int(i) for i in hard), tuple(sorted((int(i), float(a)) for i, a in soft.items())))

    @classmethod
    def soft_of(cls, layers, alpha: float) -> "SkipPlan":
        """The same layers soft-skipped with one alpha."""
        return cls.make(soft={int(i): alpha for i in layers})

    @property
    def soft_map(self) -> dict[int, float]:
        return dict(self.soft)

    @property
    def layers(self) -> list[int]:
        """Every layer the plan touches, sorted."""
        return sorted(self.hard | set(self.soft_map))

    def is_empty(self) -> bool:
        return not self.hard and not self.soft

    def validate(self, n_layers: int) -> "SkipPlan":
        """Raise PlanError naming the bad value; return self when the plan is usable."""
        soft = self.soft_map
        for idx in self.layers:
            if not 0 <= idx < n_layers:
                raise PlanError(f"layer index {idx} is out of range: the model has layers 0..{n_layers - 1}")
        if 0 in self.layers:
            raise PlanError("layer 0 cannot be skipped: the KV cache takes its length from layer 0, "
                            "so skipping it corrupts cached generation")
        both = self.hard & set(soft)
        if both:
            raise PlanError(f"layers {sorted(both)} are both hard- and soft-skipped; choose one per layer")
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
        return "; ".join(parts) or "no skip"


NO_SKIP = SkipPlan()


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layer list of a Llama-family causal LM."""
    return model.model.layers


def _hard_forward_fn():
    def forward(hidden_states, *args, **kwargs):
        return hidden_states
    return forward


def _soft_forward(original, alpha):
    def forward(hidden_states, *args, **kwargs):
        out = original(hidden_states, *args, **kwargs)
        return alpha * out + (1.0 - alpha) * hidden_states
    return forward


_GATE = "_ais_gate"  # marks a forward the skipper installed
_UNDER = "_ais_forward_under"  # the layer's own instance forward before the gate (e.g. accelerate's offload hook)


def _install(layer, forward) -> None:
    """Gate a layer: keep whatever instance forward it had (another library's hook) to restore later."""
    if getattr(layer.__dict__.get("forward"), _GATE, False):
        raise RuntimeError("a layer is already gated; clear the plan first")
    if "forward" in layer.__dict__:
        layer.__dict__[_UNDER] = layer.__dict__["forward"]
    setattr(forward, _GATE, True)
    layer.forward = forward


def _original(layer):
    """The layer's forward as it was before the skipper: its own instance forward or the class's."""
    return layer.__dict__.get(_UNDER) or layer.__dict__.get("forward") or type(layer).forward.__get__(layer)


def clear_plan(model) -> None:
    """Remove every gate: the model is exactly as loaded (a forward another library installed, such as
    accelerate's offload hook under `device_map`, is put back)."""
    for layer in decoder_layers(model):
        if getattr(layer.__dict__.get("forward"), _GATE, False):
            del layer.__dict__["forward"]
            if _UNDER in layer.__dict__:
                layer.forward = layer.__dict__.pop(_UNDER)
    model._ais_plan = NO_SKIP


def set_plan(model, plan: SkipPlan) -> None:
    """Apply `plan` persistently (until the next set_plan or clear_plan)."""
    layers = decoder_layers(model)
    plan.validate(len(layers))
    clear_plan(model)
    for idx in plan.hard:
        _install(layers[idx], _hard_forward_fn())
    for idx, alpha in plan.soft:
        _install(layers[idx], _soft_forward(_original(layers[idx]), alpha))
    model._ais_plan = plan


def current_plan(model) -> SkipPlan:
    return getattr(model, "_ais_plan", NO_SKIP)


def group_by_plan(plans) -> dict[SkipPlan, list[int]]:
    """Row indices per distinct plan, in first-seen order: rows that share a plan run as one sub-batch."""
    groups: dict[SkipPlan, list[int]] = {}
    for i, plan in enumerate(plans):
        groups.setdefault(plan, []).append(i)
    return groups


@contextmanager
def skipping(model, plan: SkipPlan):
    """Apply `plan` for the duration of a `with` block, then restore the previous plan."""
    previous = current_plan(model)
    set_plan(model, plan)
    try:
        yield model
    finally:
        set_plan(model, previous)
