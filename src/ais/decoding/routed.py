"""The routed decoder: router -> map -> method -> plan, for a whole batch in one pass.

The prefill runs the router's layers (0..pivot-1) once for every row; their output is both the
router's embedding and the input of the remaining layers. Each row is routed (its category and
nearest map entries), the method (`skip.plan`: any registered method in `ais.methods`) gives each
row its plan, and the remaining layers run under the rows' own plans in the same batch (the
engine gathers the rows that run each layer). A method whose plan needs the prompt's own layer
scores (`prompt`), a per-token method (`dynamic`), and the decode-time protocol (`full_prefill`)
run the whole prefill, then set the plans for the generated tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ais.decoding.greedy import decode
from ais.methods import Budget, Request, make
from ais.methods.base import Setup
from ais.model.engine import Engine, Record
from ais.model.loading import model_identity
from ais.model.plan import NO_SKIP, SkipPlan
from ais.model.prompts import context_length, encode_prompts
from ais.routing.embedding import pool
from ais.routing.budget import MODES, SkipSettings, n_layers_to_skip
from ais.routing.topomap import MapError, TopoMap


@dataclass
class Route:
    """Where one prompt was routed and what that means for its forward."""

    category: str
    neighbours: list[int] = field(default_factory=list)     # map entry indices, nearest first
    similarities: list[float] = field(default_factory=list)
    embedding: np.ndarray | None = None
    plan: SkipPlan = NO_SKIP
    scores: np.ndarray | None = None  # the prompt's own layer scores, where its plan needed them


class RoutedDecoder:
    """Routes prompts with the map and runs every row under its own plan in one batch.

    `mode` (hard | soft | full) chooses what the plan does with its layers; None means the settings'
    mode (params.yaml `skip.mode`); `full` routes but skips nothing."""

    def __init__(self, model, topo: TopoMap, settings: SkipSettings, k: int = 10, router: str = "knn",
                 batch_size: int = 16, importance_path=None, gates=None, setup: Setup | None = None,
                 params: dict | None = None, root=None):
        topo.check_model(model_identity(model))
        if topo.importance is None:
            raise MapError("the map has no layer importance attached; run `dvc repro` (importance -> map)")
        if router not in ("knn", "learned"):
            raise MapError(f"router.kind={router!r} must be 'knn' or 'learned'")
        self.model, self.topo, self.settings, self.k, self.router = model, topo, settings, k, router
        self.batch_size = batch_size
        self.engine = Engine(model)
        self.pivot = int(topo.identity["pivot_layer"])
        self.pooling = topo.identity.get("pooling", "last")
        self.setup = setup or Setup(topo, self.pivot, settings, self.engine.n_layers, importance_path=importance_path,
                                    params=params or {}, root=root if root is not None else Path("."), k=k)
        self.gates = gates  # the calibrated per-token gates {layers: gate}, or a function reading them when first needed
        self._method = None

    @property
    def method(self):
        """The method `skip.plan` names (made when first used: a stage that only routes reads no budget key)."""
        if self._method is None:
            self._method = make(self.settings.plan, self.setup)
            if self._method.per_token and self.gates:
                self._method.gates.update(self.gates() if callable(self.gates) else self.gates)
        return self._method

    @method.setter
    def method(self, method) -> None:
        self._method = method

    def with_plan(self, name: str) -> "RoutedDecoder":
        """The same router and map choosing plans with another method (`ais.methods.names()`)."""
        return RoutedDecoder(self.model, self.topo, self.settings.replace(plan=name), self.k, self.router,
                             self.batch_size, gates=self.gates, setup=self.setup)

    def skippable_layers(self) -> list[int]:
        """The layers any plan may skip, whatever their importance: at or past the pivot, never layer 0."""
        return self.setup.skippable()

    def budget(self, mode: str | None = None, layers: int | None = None) -> Budget:
        """The settings' budget in `mode`; a per-token method needs a count (from `skip.fraction`)."""
        if layers is None and self.method.per_token:
            layers = n_layers_to_skip(self.settings.fraction, self.engine.n_layers)
        return self.setup.budget(layers, mode)

    def plan_for(self, category: str, layers: int | None = None, mode: str | None = None) -> SkipPlan:
        """A category's plan (its importance's lowest layers past the pivot) in `mode`."""
        return make("category", self.setup).plan(Request("", category), self.setup.budget(layers, mode))

    # -- routing
    def route_embeddings(self, vectors: np.ndarray, scores: np.ndarray | None = None) -> list[Route]:
        """Routes (without plans) for pooled router embeddings (Q x hidden). The k-NN router searches the
        index once; the learned router does not search it unless the method needs the neighbours."""
        sims = idx = None
        if self.router == "knn" or "neighbours" in self.method.needs:
            sims, idx = self.topo.search(vectors, self.k)
        predicted = self.topo.predict_learned(vectors) if self.router == "learned" else self.topo.vote(sims, idx).argmax(1)
        return [Route(self.topo.categories[int(c)], idx[q].tolist() if idx is not None else [],
                      [round(float(v), 4) for v in sims[q]] if sims is not None else [], vectors[q],
                      scores=scores[q] if scores is not None else None)
                for q, c in enumerate(predicted)]

    def requests(self, routes: list[Route], prompts: list[str] | None = None, truth: list[str] | None = None,
                 references: list | None = None) -> list[Request]:
        """What a method sees of each routed prompt."""
        return [Request(prompts[i] if prompts else "", r.category, r.neighbours, r.similarities, r.embedding,
                        r.scores, truth[i] if truth else None, references[i] if references else None,
                        key=prompts[i] if prompts else i)
                for i, r in enumerate(routes)]

    def plans(self, routes: list[Route], mode: str | None = None, layers: int | None = None, method=None,
              prompts: list[str] | None = None) -> list[SkipPlan]:
        """Each route's plan by `method` (default the decoder's), set on the routes too; `full`: no plan."""
        mode = mode or self.settings.mode
        if mode == "full" or (method or self.method).per_token:  # a per-token method's gate decides while decoding
            plans = [NO_SKIP] * len(routes)
        elif mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of full, {', '.join(MODES)}")
        else:
            plans = (method or self.method).plans(self.requests(routes, prompts), self.budget(mode, layers))
        for route, plan in zip(routes, plans):
            route.plan = plan
        return plans

    def needs_full_prefill(self, mode: str | None = None) -> bool:
        return (mode or self.settings.mode) != "full" and (self.method.decode_only or self.method.per_token)

    @torch.inference_mode()
    def route_prompts(self, tokenizer, prompts: list[str], mode: str | None = None, scores: bool | None = None,
                      layers: int | None = None) -> list[Route]:
        """Routes of chat prompts with their plans, `batch_size` at a time: the router forward only, or
        (for a method that needs the prompt's own layer scores, or `scores`) a forward through every
        layer, which gives them."""
        scores = (mode != "full" and "scores" in self.method.needs) if scores is None else scores
        routes = []
        for start in range(0, len(prompts), self.batch_size):
            batch = encode_prompts(tokenizer, prompts[start:start + self.batch_size], self.model.device,
                                   context_length(self.model))
            record = Record(influence=scores, outputs=(self.pivot - 1,))
            self.engine.forward(batch["input_ids"], batch["attention_mask"], stop=None if scores else self.pivot,
                                record=record)
            pooled = pool(record.kept_outputs[self.pivot - 1], batch["attention_mask"], self.pooling).float().cpu().numpy()
            own = record.influence_matrix(len(pooled), self.engine.n_layers, "cpu").numpy() if scores else None
            routes += self.route_embeddings(pooled, own)
        self.plans(routes, mode, layers, prompts=prompts)
        return routes

    # -- decoding
    @torch.inference_mode()
    def prefill(self, batch: dict, mode: str | None = None, layers: int | None = None, full_prefill: bool = False,
                clock=None, record: Record | None = None):
        """The prompts' prefill with routing for free (the router's layers are its first layers): (the
        batch in flight, last-position logits B x vocab, routes with plans). With a plan known at the
        pivot the remaining layers already run under it; with `full_prefill` (and for methods that need
        the prompt's own scores) every layer runs and the plans apply to the tokens that follow."""
        mode = mode or self.settings.mode
        full = full_prefill or self.needs_full_prefill(mode) or mode == "full"
        flight = self.engine.start(batch["attention_mask"])
        x, ctx = flight.feed(batch["input_ids"], clock=clock)
        wants_scores = mode != "full" and "scores" in self.method.needs
        record = record or Record()
        record.influence = record.influence or wants_scores
        hidden = flight.run(x, ctx, 0, self.pivot, record=record, clock=clock)
        pooled = pool(hidden, batch["attention_mask"], self.pooling).float().cpu().numpy()
        if full:
            hidden = flight.run(hidden, ctx, self.pivot, record=record, clock=clock)
            own = record.influence_matrix(len(pooled), self.engine.n_layers, "cpu").numpy() if wants_scores else None
            routes = self.route_embeddings(pooled, own)
            plans = self.plans(routes, mode, layers)
            flight.set_plans(None if mode == "full" or self.method.per_token else plans)
        else:
            routes = self.route_embeddings(pooled)
            plans = self.plans(routes, mode, layers)
            hidden = flight.run(hidden, ctx, self.pivot, plans=plans, clock=clock)
            flight.set_plans(plans)
        return flight, self.engine.last_logits(hidden, clock), routes

    @torch.inference_mode()
    def generate(self, batch: dict, max_new_tokens: int, eos_token_id: int | None = None, mode: str | None = None,
                 layers: int | None = None, full_prefill: bool = False, clock=None):
        """Routed greedy generation of a whole batch in one pass: (new ids B x max_new_tokens, routes,
        layers run per generated token (per-token methods) or None)."""
        mode = mode or self.settings.mode
        flight, logits, routes = self.prefill(batch, mode, layers, full_prefill, clock)
        gate = self.method.gate(self.budget(mode, layers)) if self.method.per_token and mode != "full" else None
        ids, depth = decode(flight, logits.argmax(-1), max_new_tokens, eos_token_id, gate=gate, clock=clock)
        return ids, routes, depth
