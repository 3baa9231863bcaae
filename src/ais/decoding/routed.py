"""The routed decoder: router -> map -> plan -> the rest of the forward, without recomputing
the layers the router already ran.

The forward is split at the router's pivot. Layers 0..pivot-1 run once (with the KV cache when
generating); their output is both the router's embedding and the input of the remaining layers,
which run under the routed plan. Rows of a batch routed to different plans continue as
sub-batches, one per plan.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from transformers import DynamicCache

from ais.decoding.greedy import continue_with_plans, greedy_continue, rows_cache
from ais.model.forward import layer_context, recording_influence, run_layers
from ais.model.gating import NO_SKIP, SkipPlan, decoder_layers, group_by_plan, skipping
from ais.model.loading import model_identity
from ais.model.prompts import context_length, encode_prompts
from ais.routing.embedding import embed_and_score, pool, router_embedding
from ais.routing.plans import (MODES, PLAN_KINDS, SkipSettings, candidate_layers, layers_from_scores, lowest_layers,
                               make_plan, select_layers)
from ais.routing.topomap import MapError, TopoMap


@dataclass
class Route:
    """Where one prompt was routed and what that means for its forward."""

    category: str
    neighbours: list[int] = field(default_factory=list)     # map entry indices, nearest first
    similarities: list[float] = field(default_factory=list)
    plan: SkipPlan = NO_SKIP
    scores: np.ndarray | None = None  # the prompt's own layer scores, where its plan needed them


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

    def with_plan(self, kind: str) -> "RoutedDecoder":
        """The same router and map choosing plans of another kind (global, category, neighbours, prompt)."""
        if kind not in PLAN_KINDS:
            raise ValueError(f"plan={kind!r} must be one of {', '.join(PLAN_KINDS)}")
        return RoutedDecoder(self.model, self.topo, replace(self.settings, plan=kind), self.k, self.router, self.batch_size)

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
        pooled = self.pooled_importance()
        pivot = 1 if below_pivot else self.pivot
        return lowest_layers(pooled, candidate_layers(pooled, pivot, self.settings.critical), n)

    def plan_for(self, category: str, fraction: float | None = None, mode: str | None = None) -> SkipPlan:
        """The skip plan of a category in `mode` (default: the settings' mode)."""
        return self.plan_of(category, fraction=fraction, mode=mode, kind="category")

    def plan_of(self, category: str, neighbours=(), scores=None, fraction: float | None = None,
                mode: str | None = None, kind: str | None = None) -> SkipPlan:
        """The plan of a prompt routed to `category`, with its nearest map entries `neighbours` and its
        own layer `scores` (block influence on its prefill), for plan `kind` (default `skip.plan`) in
        `mode` (default `skip.mode`): every kind follows the same budget rule (the lowest-scored layers
        past the pivot, below `critical`)."""
        mode, kind = mode or self.settings.mode, kind or self.settings.plan
        if mode == "full":
            return NO_SKIP
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of full, {', '.join(MODES)}")
        if kind == "category":
            layers = self.layers_for(category, fraction)
        elif kind == "global":
            layers = select_layers(self.pooled_importance(), self.pivot, self.settings, fraction)
        elif kind == "neighbours":
            if not len(neighbours):
                raise ValueError("the neighbours plan needs the prompt's nearest map entries")
            layers = layers_from_scores(self.topo.neighbour_scores(neighbours), self.pivot, self.settings, fraction)
        elif kind == "prompt":
            if scores is None:
                raise ValueError("the prompt plan needs the prompt's own layer scores, from a prefill of every layer")
            layers = layers_from_scores(scores, self.pivot, self.settings, fraction)
        else:
            raise ValueError(f"skip.plan={kind!r} must be one of {', '.join(PLAN_KINDS)}")
        return make_plan(layers, mode, self.settings.alpha)

    def pooled_importance(self) -> np.ndarray:
        """The importance over all categories pooled (maps without it: the mean of the categories')."""
        return self.topo.global_importance if self.topo.global_importance is not None else self.topo.importance.mean(0)

    def route_embeddings(self, vectors: np.ndarray, mode: str | None = None, scores: np.ndarray | None = None,
                         kind: str | None = None, fraction: float | None = None) -> list[Route]:
        """Routes for pooled router embeddings (Q x hidden), with the prompts' own layer scores (Q x
        n_layers) where the plan kind needs them. The k-NN router searches the index once; the learned
        router does not search it (its routes carry no neighbours) unless the neighbours plan needs them."""
        kind = kind or self.settings.plan
        sims = idx = None
        if self.router == "knn" or kind == "neighbours":
            sims, idx = self.topo.search(vectors, self.k)
        predicted = self.topo.predict_learned(vectors) if self.router == "learned" else self.topo.vote(sims, idx).argmax(1)
        routes = []
        for q, c in enumerate(predicted):
            category = self.topo.categories[int(c)]
            neighbours = idx[q].tolist() if idx is not None else []
            similarities = [round(float(v), 4) for v in sims[q]] if sims is not None else []
            own = scores[q] if scores is not None else None
            routes.append(Route(category, neighbours, similarities,
                                self.plan_of(category, neighbours, own, fraction, mode, kind), own))
        return routes

    def route_prompts(self, tokenizer, prompts: list[str], mode: str | None = None, kind: str | None = None) -> list[Route]:
        """Routes of chat prompts, `batch_size` at a time (the router forward only; for the prompt plan,
        a forward through every layer, which gives each prompt's own layer scores)."""
        kind = kind or self.settings.plan
        if kind == "prompt" and mode != "full":
            vectors, scores = embed_and_score(self.model, tokenizer, prompts, self.pivot, self.pooling, self.batch_size,
                                              progress=False)
            return self.route_embeddings(vectors, mode, scores, kind)
        vectors = []
        for start in range(0, len(prompts), self.batch_size):
            batch = encode_prompts(tokenizer, prompts[start:start + self.batch_size], self.model.device,
                                   context_length(self.model))
            vectors.append(router_embedding(self.model, batch, self.pivot, self.pooling).cpu().numpy())
        return self.route_embeddings(np.concatenate(vectors), mode, kind=kind)

    @torch.inference_mode()
    def prefix(self, batch: dict, cache=None):
        """Run layers below the pivot once: (hidden at pivot, per-layer context, pooled router embeddings)."""
        embeds, ctx = layer_context(self.model, batch, cache)
        hidden = run_layers(self.model, embeds, ctx, 0, self.pivot)
        return hidden, ctx, pool(hidden, batch["attention_mask"], self.pooling).float().cpu().numpy()

    @torch.inference_mode()
    def next_token_logits(self, batch: dict, mode: str | None = None) -> tuple[torch.Tensor, list[Route]]:
        """Routed last-position logits (B x vocab): the router's layers are not run twice. For the
        prompt plan the prefill runs every layer (its plan applies to generated tokens only), so these
        are the full model's logits."""
        if self.settings.plan == "prompt" and mode != "full":
            return self.route_and_prefill(batch, None, mode)
        hidden, ctx, pooled = self.prefix(batch)
        routes = self.route_embeddings(pooled, mode)
        logits = torch.empty((hidden.shape[0], self.model.config.vocab_size), device=hidden.device)
        n_layers = len(decoder_layers(self.model))
        for plan, rows in group_by_plan(r.plan for r in routes).items():
            with skipping(self.model, plan):
                sub = run_layers(self.model, hidden[rows], _rows(ctx, rows), self.pivot, n_layers)
            logits[rows] = _head(self.model, sub)
        return logits, routes

    @torch.inference_mode()
    def route_and_prefill(self, batch: dict, cache, mode: str = "full", kind: str | None = None,
                          fraction: float | None = None) -> tuple[torch.Tensor, list[Route]]:
        """The full model's prefill of a batch (every layer, the cache filled) with the routing for
        free: the router's layers are the prefill's first layers; for the prompt plan the prefill also
        records each prompt's own layer scores. (last-position logits B x vocab, routes with plans of
        `kind` in `mode`; `full`: no plan)."""
        kind = kind or self.settings.plan
        record = kind == "prompt" and mode != "full"
        with recording_influence(self.model, batch["attention_mask"]) if record else nullcontext() as influence:
            hidden, ctx, pooled = self.prefix(batch, cache)
            hidden = run_layers(self.model, hidden, ctx, self.pivot, len(decoder_layers(self.model)))
        scores = torch.stack([influence[i] for i in range(len(influence))], 1).cpu().numpy() if record else None
        return _head(self.model, hidden), self.route_embeddings(pooled, mode, scores, kind, fraction)

    @torch.inference_mode()
    def generate(self, batch: dict, max_new_tokens: int, eos_token_id: int | None = None, mode: str | None = None):
        """Routed greedy generation with a KV cache: (new ids B x max_new_tokens, routes).
        The prefill below the pivot is shared by the router and the decoder. The prompt plan's prefill
        runs every layer; its plan applies to the generated tokens."""
        cache = DynamicCache(config=self.model.config)
        if self.settings.plan == "prompt" and mode != "full":
            logits, routes = self.route_and_prefill(batch, cache, mode or self.settings.mode)
            out = continue_with_plans(self.model, logits.argmax(-1), batch["attention_mask"], cache,
                                      [r.plan for r in routes], max_new_tokens, eos_token_id)
            return out, routes
        hidden, ctx, pooled = self.prefix(batch, cache)
        routes = self.route_embeddings(pooled, mode)
        groups = group_by_plan(r.plan for r in routes)
        n_layers = len(decoder_layers(self.model))
        out = torch.empty((hidden.shape[0], max_new_tokens), dtype=torch.long, device=hidden.device)
        for plan, rows in groups.items():
            sub_cache = rows_cache(cache, rows, len(groups) > 1)
            sub_ctx = {**_rows(ctx, rows), "past_key_values": sub_cache}
            with skipping(self.model, plan):
                first = _head(self.model, run_layers(self.model, hidden[rows], sub_ctx, self.pivot, n_layers)).argmax(-1)
                out[rows] = greedy_continue(self.model, first, batch["attention_mask"][rows], sub_cache,
                                            max_new_tokens, eos_token_id)
        return out, routes
