"""The routed decoder: router -> map -> plan -> the rest of the forward, without recomputing
the layers the router already ran.

The forward is split at the router's pivot. Layers 0..pivot-1 run once (with the KV cache when
generating); their output is both the router's embedding and the input of the remaining layers,
which run under the routed plan. Rows of a batch routed to different plans continue as
sub-batches, one per plan.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from transformers import DynamicCache

from ais.decoding.greedy import greedy_continue
from ais.model.forward import layer_context, run_layers
from ais.model.gating import NO_SKIP, SkipPlan, decoder_layers, group_by_plan, skipping
from ais.model.loading import model_identity
from ais.model.prompts import context_length, encode_prompts
from ais.routing.embedding import pool, router_embedding
from ais.routing.plans import MODES, SkipSettings, candidate_layers, lowest_layers, make_plan, select_layers
from ais.routing.topomap import MapError, TopoMap


@dataclass
class Route:
    """Where one prompt was routed and what that means for its forward."""

    category: str
    neighbours: list[int] = field(default_factory=list)     # map entry indices, nearest first
    similarities: list[float] = field(default_factory=list)
    plan: SkipPlan = NO_SKIP


def _head(model, hidden):
    """Last-position logits, as LlamaForCausalLM computes them with logits_to_keep=1."""
    return model.lm_head(model.model.norm(hidden)[:, -1:, :])[:, -1, :].float()


def _rows(ctx: dict, rows: list[int]) -> dict:
    """The per-layer keyword arguments restricted to some batch rows."""
    out = dict(ctx)
    mask = ctx["attention_mask"]
    if isinstance(mask, torch.Tensor) and mask.shape[0] > 1:
        out["attention_mask"] = mask[rows]
    return out


class RoutedDecoder:
    """Routes prompts with the map and runs the model under each prompt's plan.

    `mode` (hard | soft | full) chooses what a route's plan does with its category's layers;
    None means the settings' mode (params.yaml `skip.mode`); `full` routes but skips nothing."""

    def __init__(self, model, topo: TopoMap, settings: SkipSettings, k: int = 10, router: str = "knn",
                 batch_size: int = 16):
        topo.check_model(model_identity(model))
        if topo.importance is None:
            raise MapError("the map has no layer importance attached; run `dvc repro` (importance -> map)")
        if router not in ("knn", "learned"):
            raise MapError(f"router.kind={router!r} must be 'knn' or 'learned'")
        self.model, self.topo, self.settings, self.k, self.router = model, topo, settings, k, router
        self.batch_size = batch_size
        self.pivot = int(topo.identity["pivot_layer"])
        self.pooling = topo.identity.get("pooling", "last")

    def with_fraction(self, fraction: float) -> "RoutedDecoder":
        """The same router and map with plans that skip `fraction` of the layers (the frontier)."""
        settings = replace(self.settings, select="fraction", fraction=fraction)
        return RoutedDecoder(self.model, self.topo, settings, self.k, self.router, self.batch_size)

    def skippable_layers(self) -> list[int]:
        """The layers any plan may skip, whatever their importance: at or past the pivot, never layer 0
        (what CLaSp's dynamic skip set chooses from)."""
        return list(range(max(1, self.pivot), len(decoder_layers(self.model))))

    def layers_for(self, category: str, fraction: float | None = None) -> list[int]:
        """The layers a category's plan skips (its lowest-importance layers at or past the pivot)."""
        importance = self.topo.importance[self.topo.categories.index(category)]
        return select_layers(importance, self.pivot, self.settings, fraction)

    def global_layers(self, n: int, below_pivot: bool = False) -> list[int]:
        """One plan for every prompt: the `n` lowest layers of the same importance measure taken over all
        categories' prompts pooled (maps without it: the mean of the categories' importance). With
        `below_pivot` the plan may also use the router's layers (a control: what the rule costs)."""
        pooled = self.topo.global_importance
        if pooled is None:
            pooled = self.topo.importance.mean(0)
        pivot = 1 if below_pivot else self.pivot
        return lowest_layers(pooled, candidate_layers(pooled, pivot, self.settings.critical), n)

    def plan_for(self, category: str, fraction: float | None = None, mode: str | None = None) -> SkipPlan:
        """The skip plan of a category in `mode` (default: the settings' mode)."""
        mode = mode or self.settings.mode
        if mode == "full":
            return NO_SKIP
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of full, {', '.join(MODES)}")
        return make_plan(self.layers_for(category, fraction), mode, self.settings.alpha)

    def route_embeddings(self, vectors: np.ndarray, mode: str | None = None) -> list[Route]:
        """Routes for pooled router embeddings (Q x hidden). The k-NN router searches the index
        once; the learned router does not search it at all (its routes carry no neighbours)."""
        if self.router == "learned":
            predicted, sims, idx = self.topo.predict_learned(vectors), None, None
        else:
            sims, idx = self.topo.search(vectors, self.k)
            predicted = self.topo.vote(sims, idx).argmax(1)
        routes = []
        for q, c in enumerate(predicted):
            category = self.topo.categories[int(c)]
            neighbours = idx[q].tolist() if idx is not None else []
            similarities = [round(float(v), 4) for v in sims[q]] if sims is not None else []
            routes.append(Route(category, neighbours, similarities, self.plan_for(category, mode=mode)))
        return routes

    def route_prompts(self, tokenizer, prompts: list[str], mode: str | None = None) -> list[Route]:
        """Routes of chat prompts, `batch_size` at a time (the router forward only)."""
        vectors = []
        for start in range(0, len(prompts), self.batch_size):
            batch = encode_prompts(tokenizer, prompts[start:start + self.batch_size], self.model.device,
                                   context_length(self.model))
            vectors.append(router_embedding(self.model, batch, self.pivot, self.pooling).cpu().numpy())
        return self.route_embeddings(np.concatenate(vectors), mode)

    @torch.inference_mode()
    def prefix(self, batch: dict, cache=None, mode: str | None = None):
        """Run layers below the pivot once: (hidden at pivot, per-layer context, routes)."""
        embeds, ctx = layer_context(self.model, batch, cache)
        hidden = run_layers(self.model, embeds, ctx, 0, self.pivot)
        pooled = pool(hidden, batch["attention_mask"], self.pooling).float().cpu().numpy()
        return hidden, ctx, self.route_embeddings(pooled, mode)

    @torch.inference_mode()
    def next_token_logits(self, batch: dict, mode: str | None = None) -> tuple[torch.Tensor, list[Route]]:
        """Routed last-position logits (B x vocab): the router's layers are not run twice."""
        hidden, ctx, routes = self.prefix(batch, mode=mode)
        logits = torch.empty((hidden.shape[0], self.model.config.vocab_size), device=hidden.device)
        n_layers = len(decoder_layers(self.model))
        for plan, rows in group_by_plan(r.plan for r in routes).items():
            with skipping(self.model, plan):
                sub = run_layers(self.model, hidden[rows], _rows(ctx, rows), self.pivot, n_layers)
            logits[rows] = _head(self.model, sub)
        return logits, routes

    @torch.inference_mode()
    def route_and_prefill(self, batch: dict, cache) -> tuple[torch.Tensor, list[Route]]:
        """The full model's prefill of a batch (every layer, the cache filled) with the routing for
        free: the router's layers are the prefill's first layers. (last-position logits B x vocab,
        routes with mode-`full` plans)."""
        hidden, ctx, routes = self.prefix(batch, cache, mode="full")
        hidden = run_layers(self.model, hidden, ctx, self.pivot, len(decoder_layers(self.model)))
        return _head(self.model, hidden), routes

    @torch.inference_mode()
    def generate(self, batch: dict, max_new_tokens: int, eos_token_id: int | None = None, mode: str | None = None):
        """Routed greedy generation with a KV cache: (new ids B x max_new_tokens, routes).
        The prefill below the pivot is shared by the router and the decoder."""
        cache = DynamicCache(config=self.model.config)
        hidden, ctx, routes = self.prefix(batch, cache, mode)
        groups = group_by_plan(r.plan for r in routes)
        n_layers = len(decoder_layers(self.model))
        out = torch.empty((hidden.shape[0], max_new_tokens), dtype=torch.long, device=hidden.device)
        for plan, rows in groups.items():
            sub_cache = cache
            if len(groups) > 1:
                sub_cache = copy.deepcopy(cache)
                sub_cache.batch_select_indices(torch.tensor(rows, device=hidden.device))
            sub_ctx = {**_rows(ctx, rows), "past_key_values": sub_cache}
            with skipping(self.model, plan):
                first = _head(self.model, run_layers(self.model, hidden[rows], sub_ctx, self.pivot, n_layers)).argmax(-1)
                out[rows] = greedy_continue(self.model, first, batch["attention_mask"][rows], sub_cache,
                                            max_new_tokens, eos_token_id)
        return out, routes
