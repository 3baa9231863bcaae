"""Methods: what chooses each request's skip plan (or per-token gate). One module per method,
registered by name; stages iterate over the methods params name and know nothing of any one.

A method is a small class (`Method`) with a `name`, what it needs to see of a request (`needs`),
and `plan(request, budget) -> SkipPlan` (or `gate(budget)` for a per-token method). It may look at
the request's route (router embedding, nearest map entries, routed category), its prompt's own
layer scores (from a full prefill), its true category (controls only) and the full model's
continuation (ceilings only), and it may `calibrate` once on calibration prompts. Adding a method
from a paper is one new module in this folder: every module here is imported by `names()`, and a
class decorated with `@register` is then available to every stage, the API and `ais generate`.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ais.model.plan import SkipPlan

_REGISTRY: dict[str, type] = {}
_SKIP_MODULES = {"search"}  # helpers, not methods


class MethodError(ValueError):
    """A method asked for by name that does not exist, or a request it cannot plan."""


@dataclass
class Request:
    """What a method may look at for one prompt (fields a method does not need may be None)."""

    prompt: str
    category: str | None = None                 # the routed category
    neighbours: list[int] = field(default_factory=list)   # nearest map entries, nearest first
    similarities: list[float] = field(default_factory=list)
    embedding: np.ndarray | None = None         # the router embedding
    scores: np.ndarray | None = None            # the prompt's own layer scores (block influence, full prefill)
    truth: str | None = None                    # the true category (controls only)
    reference: object = None                    # the full model's continuation (ceilings only)
    key: object = None                          # identifies the request (memoised searches, seeded draws)


@dataclass(frozen=True)
class Budget:
    """How much a plan may skip: `layers` (None: params' rule, `skip.select` with `skip.fraction` or
    `skip.threshold`) in `mode` with `alpha`; `cost` is the same budget in units of one layer's
    measured decode cost (sub-layer plans spend it block by block)."""

    layers: int | None = None
    mode: str = "hard"
    alpha: float = 0.7
    cost: float | None = None

    def fraction(self, n_layers: int) -> float | None:
        return None if self.layers is None else self.layers / n_layers


class Method:
    """Base class: a method chooses a plan per request (or a gate for every token)."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()   # of route, neighbours, scores, truth, reference
    decode_only: ClassVar[bool] = False   # its plan applies to generated tokens: the prompt's prefill runs every layer
    per_token: ClassVar[bool] = False     # gives a per-token gate (`gate`), not a plan
    control: ClassVar[bool] = False       # a control or a ceiling: its quality is measured, never its speed
    deployable: ClassVar[bool] = True     # usable at request time as `skip.plan` (no truth, no reference, no calibration)

    def __init__(self, setup):
        self.setup = setup

    def unavailable(self) -> str | None:
        """Why this method cannot run on its setup (e.g. a map without per-entry scores), or None."""
        return None

    def calibrate(self, calibration) -> None:
        """Fit what the method needs on calibration prompts (`ais.methods.base.Calibration`); most need nothing."""

    def plan(self, request: Request, budget: Budget) -> SkipPlan:
        raise NotImplementedError

    def gate(self, budget: Budget):
        raise NotImplementedError(f"{self.name} gives plans, not a per-token gate")

    def plans(self, requests: list[Request], budget: Budget) -> list[SkipPlan]:
        return [self.plan(r, budget) for r in requests]


def register(cls: type) -> type:
    """Class decorator: make a Method available by its `name`."""
    if not cls.name:
        raise MethodError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise MethodError(f"two methods are registered as {cls.name!r}: {_REGISTRY[cls.name].__name__} and {cls.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def discover() -> None:
    """Import every module of this package once (each registers its methods)."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SKIP_MODULES and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def names(deployable_only: bool = False) -> list[str]:
    """Every registered method's name (sorted)."""
    discover()
    return sorted(n for n, c in _REGISTRY.items() if c.deployable or not deployable_only)


def method_class(name: str) -> type:
    discover()
    if name not in _REGISTRY:
        raise MethodError(f"no method is named {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make(name: str, setup) -> Method:
    """A fresh instance of the method `name` for `setup` (`ais.methods.base.Setup`)."""
    return method_class(name)(setup)


def check_names(params: dict) -> list[str]:
    """Problems with the method names params.yaml gives (`ais.params.METHOD_KEYS`): unknown names, and a
    `skip.plan` that cannot be deployed; [] when all are known."""
    from ais.params import METHOD_KEYS

    known, deployable = names(), names(deployable_only=True)
    problems = []
    for dotted, must_deploy in METHOD_KEYS.items():
        node = params
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values = node if isinstance(node, list) else [node] if node is not None else []
        for value in values:
            allowed = deployable if must_deploy else known
            if value not in allowed:
                kind = "a deployable method" if must_deploy else "a method"
                problems.append(f"`{dotted}` names {value!r}, which is not {kind} registered in src/ais/methods "
                                f"(one of {', '.join(allowed)})")
    return problems
