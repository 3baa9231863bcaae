"""The routed decoder: router -> map -> plan -> the rest of the forward, without recomputing
the layers the router already ran.

The forward is split at the router's pivot. Layers 0..pivot-1 run once (with the KV cache when
generating); their output is both the router's embedding and the input of the remaining layers,
which run under the routed plan. Rows of a batch routed to different plans continue as
sub-batches, one per plan.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from ais.plan import SkipSettings, make_plan, select_layers
from ais.decode import context_length, encode_prompts
from ais.router import pool, router_embedding
from ais.skip import NO_SKIP, SkipPlan, decoder_layers, skipping
from ais.topomap import MapError, TopoMap


@dataclass
class Route:
    """Where one prompt was routed and what that means for its forward."""

    category: str
    neighbours: list[int] = field(default_factory=list)     # map entry indices, nearest first
    similarities: list[float] = field(default_factory=list)
    plan: SkipPlan = NO_SKIP


def layer_kwargs(model, hidden, cache, attention_mask=None, layer: int = 0) -> dict:
    """The keyword arguments LlamaModel.forward passes to each decoder layer, for `hidden` appended
    after what cache layer `layer` holds (layers may hold different lengths while drafting)."""
    past = cache.get_seq_length(layer) if cache is not None else 0
    position_ids = (torch.arange(hidden.shape[1], device=hidden.device) + past).unsqueeze(0)
    mask = create_causal_mask(config=model.model.config, inputs_embeds=hidden, attention_mask=attention_mask,
                              past_key_values=cache, position_ids=position_ids, layer_idx=layer)
    return {"attention_mask": mask, "position_ids": position_ids, "past_key_values": cache,
            "use_cache": cache is not None,
            "position_embeddings": model.model.rotary_emb(hidden, position_ids=position_ids)}


def _context(model, batch: dict, cache):
    """Embeddings and the per-layer keyword arguments LlamaModel.forward would build."""
    embeds = model.model.embed_tokens(batch["input_ids"])
    return embeds, layer_kwargs(model, embeds, cache, batch["attention_mask"])


def run_layers(model, hidden, ctx, start: int, stop: int):
    """Decoder layers start..stop-1 on `hidden` (under whatever skip plan is set)."""
    for layer in decoder_layers(model)[start:stop]:
        hidden = layer(hidden, **ctx)
    return hidden


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
    """Routes prompts with the map and runs the model under each prompt's plan."""

    def __init__(self, model, topo: TopoMap, settings: SkipSettings, k: int = 10, router: str = "knn"):
        from ais.model import model_identity

        topo.check_model(model_identity(model))
        if topo.importance is None:
            raise MapError("the map has no layer importance attached; run `dvc repro` (importance -> map)")
        self.model, self.topo, self.settings, self.k, self.router = model, topo, settings, k, router
        self.pivot = int(topo.identity["pivot_layer"])
        self.pooling = topo.identity.get("pooling", "last")

    def plan_for(self, category: str, fraction: float | None = None, mode: str | None = None) -> SkipPlan:
        """The skip plan of a category (its lowest-importance layers at or past the pivot)."""
        importance = self.topo.importance[self.topo.categories.index(category)]
        layers = select_layers(importance, self.pivot, self.settings, fraction)
        return make_plan(layers, mode or self.settings.mode, self.settings.alpha)

    def route_embeddings(self, vectors: np.ndarray) -> list[Route]:
        """Routes for pooled router embeddings (Q x hidden)."""
        sims, idx = self.topo.search(vectors, self.k)
        predicted = self.topo.predict(vectors, self.k, self.router)
        routes = []
        for q, c in enumerate(predicted):
            category = self.topo.categories[int(c)]
            routes.append(Route(category, idx[q].tolist(), [round(float(s), 4) for s in sims[q]],
                                self.plan_for(category)))
        return routes

    def route_prompts(self, tokenizer, prompts: list[str], batch_size: int = 16) -> list[Route]:
        """Routes of chat prompts, batch by batch (the router forward only)."""
        vectors = []
        for start in range(0, len(prompts), batch_size):
            batch = encode_prompts(tokenizer, prompts[start:start + batch_size], self.model.device,
                                   context_length(self.model))
            vectors.append(router_embedding(self.model, batch, self.pivot, self.pooling).cpu().numpy())
        return self.route_embeddings(np.concatenate(vectors))

    @torch.inference_mode()
    def prefix(self, batch: dict, cache=None):
        """Run layers below the pivot once: (hidden at pivot, per-layer context, routes)."""
        embeds, ctx = _context(self.model, batch, cache)
        hidden = run_layers(self.model, embeds, ctx, 0, self.pivot)
        pooled = pool(hidden, batch["attention_mask"], self.pooling).float().cpu().numpy()
        return hidden, ctx, self.route_embeddings(pooled)

    @torch.inference_mode()
    def next_token_logits(self, batch: dict) -> tuple[torch.Tensor, list[Route]]:
        """Routed last-position logits (B x vocab): the router's layers are not run twice."""
        hidden, ctx, routes = self.prefix(batch)
        logits = torch.empty((hidden.shape[0], self.model.config.vocab_size), device=hidden.device)
        n_layers = len(decoder_layers(self.model))
        for plan, rows in _group_by_plan(routes).items():
            with skipping(self.model, plan):
                sub = run_layers(self.model, hidden[rows], _rows(ctx, rows), self.pivot, n_layers)
            logits[rows] = _head(self.model, sub)
        return logits, routes


    @torch.inference_mode()
    def generate(self, batch: dict, max_new_tokens: int, eos_token_id: int | None = None):
        """Routed greedy generation with a KV cache: (new ids B x max_new_tokens, routes).
        The prefill below the pivot is shared by the router and the decoder."""
        cache = DynamicCache(config=self.model.config)
        hidden, ctx, routes = self.prefix(batch, cache)
        groups = _group_by_plan(routes)
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


@torch.inference_mode()
def greedy_continue(model, first: torch.Tensor, attention_mask: torch.Tensor, cache, max_new_tokens: int,
                    eos_token_id: int | None = None, pad_token_id: int = 0) -> torch.Tensor:
    """Greedy decoding from a filled cache, given the first new token of each row (B x max_new_tokens).
    Rows that produced `eos_token_id` are padded with `pad_token_id` after it."""
    tokens = [first]
    done = first == eos_token_id if eos_token_id is not None else torch.zeros_like(first, dtype=torch.bool)
    mask = attention_mask
    for _ in range(max_new_tokens - 1):
        if done.all():
            tokens.append(torch.full_like(first, pad_token_id))
            continue
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        logits = model(input_ids=tokens[-1][:, None], attention_mask=mask, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1, :]
        nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        if eos_token_id is not None:
            done = done | (nxt == eos_token_id)
        tokens.append(nxt)
    return torch.stack(tokens, 1)


@torch.inference_mode()
def plain_generate(model, batch: dict, max_new_tokens: int, plan: SkipPlan = NO_SKIP,
                   eos_token_id: int | None = None) -> torch.Tensor:
    """Greedy generation with the same loop as the routed decoder, for an even-handed baseline."""
    cache = DynamicCache(config=model.config)
    with skipping(model, plan):
        logits = model(**batch, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
        return greedy_continue(model, logits.argmax(-1), batch["attention_mask"], cache, max_new_tokens, eos_token_id)


def _group_by_plan(routes: list[Route]) -> dict[SkipPlan, list[int]]:
    groups: dict[SkipPlan, list[int]] = {}
    for i, route in enumerate(routes):
        groups.setdefault(route.plan, []).append(i)
    return groups


@torch.inference_mode()
def plain_next_token_logits(model, batch: dict) -> torch.Tensor:
    """The unmodified model's last-position logits, the baseline the routed decoder is timed against."""
    return model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1, :].float()
