"""Per-token depth at decoding time, training-free, with a complete KV cache (mode `dynamic`).

Each generated token runs the decoder layers in order and, after every layer from `min_layer - 1`
on, checks CALM's hidden-state saturation (Schuster et al. 2022, "Confident Adaptive Language
Modeling", the state-propagation confidence measure): the cosine similarity between the token's
state entering and leaving that layer. Once it reaches `threshold`, the token exits: the later
layers are skipped for that token and its state goes to the final norm and the head. CALM exits
from every later layer; with `candidates`, the exited token skips only those later layers (the
least important ones of the pooled importance) and still runs the rest. On SmolLM2-135M the later
layers include the ones the output can least do without (the last layer changes a token's state
most of all), and CALM's plain exit loses far more agreement than a static plan of the same mean
depth (docs/stack.md), which is why the candidates exist.

A skipped layer still writes the token's keys and values, computed from the token's state at that
layer's input (its exit state: CALM's state propagation; FlexiDepth keeps its cache complete the
same way), so every later token attends to every earlier position at every layer. The prompt's
prefill runs every layer; only decoding is adaptive.

At batch > 1 every row decides alone. A layer is saved only when every row has exited (its keys
and values are then all that runs); while some row still runs it, the layer runs on the whole
batch and the exited rows keep their state (the layer's keys and values for them, computed from
that state, are exactly what the fill would write). On a CPU, where decoding is bound by reading
the weights, running a layer for fewer rows would cost about the same anyway.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ais.model.forward import layer_kwargs
from ais.model.gating import decoder_layers


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


NEVER = DepthGate(threshold=2.0)  # the gate that never fires: plain greedy decoding


def fill_kv(layer, hidden: torch.Tensor, ctx: dict) -> None:
    """Append `hidden`'s keys and values at this layer to the cache, as the layer itself computes
    them: input norm, key and value projections (the key norm where the family has one), rotary
    embedding of the keys. Nothing else of the layer runs."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    shape = (*x.shape[:-1], -1, attn.head_dim)
    keys = attn.k_proj(x).view(shape)
    if getattr(attn, "k_norm", None) is not None:  # Qwen3
        keys = attn.k_norm(keys)
    keys = keys.transpose(1, 2)
    values = attn.v_proj(x).view(shape).transpose(1, 2)
    cos, sin = ctx["position_embeddings"]
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # the family's own rotary embedding
    _, keys = rotate(keys, keys, cos, sin)
    ctx["past_key_values"].update(keys, values, attn.layer_idx)


def dynamic_layers(model, hidden: torch.Tensor, ctx: dict, gate: DepthGate) -> tuple[torch.Tensor, torch.Tensor]:
    """All decoder layers on one new position per row (B x 1 x d) under `gate`: (last state,
    layers each row ran, B). A row skipping a layer keeps its state; its keys and values are still written."""
    layers = decoder_layers(model)
    exited = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    depth = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
    precision = torch.promote_types(hidden.dtype, torch.float32)
    for i, layer in enumerate(layers):
        running = ~exited if gate.skippable(i) else torch.ones_like(exited)
        if not bool(running.any()):
            fill_kv(layer, hidden, ctx)
            continue
        out = layer(hidden, **ctx)
        depth += running
        if i + 1 >= gate.min_layer and i + 1 < len(layers):
            similarity = torch.cosine_similarity(hidden[:, -1].to(precision), out[:, -1].to(precision), dim=-1)
            exiting = running & (similarity >= gate.threshold)
        else:
            exiting = torch.zeros_like(exited)
        hidden = out if bool(running.all()) else torch.where(running[:, None, None], out, hidden)
        exited = exited | exiting
    return hidden, depth


def _logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Last-position logits (B x vocab), as the causal LM computes them."""
    return model.lm_head(model.model.norm(hidden[:, -1:]))[:, -1]


@torch.inference_mode()
def dynamic_step(model, tokens: torch.Tensor, attention_mask: torch.Tensor, cache, gate: DepthGate):
    """One decoding step of `tokens` (B) appended to the cache: (logits B x vocab, layers run B).
    `attention_mask` covers the cache and the new position."""
    x = model.model.embed_tokens(tokens[:, None])
    ctx = layer_kwargs(model, x, cache, attention_mask)
    hidden, depth = dynamic_layers(model, x, ctx, gate)
    return _logits(model, hidden), depth


@torch.inference_mode()
def dynamic_continue(model, first: torch.Tensor, attention_mask: torch.Tensor, cache, max_new_tokens: int,
                     gate: DepthGate, eos_token_id: int | None = None, pad_token_id: int = 0):
    """Greedy decoding under `gate` from a filled cache, given each row's first new token: (ids
    B x max_new_tokens, layers run per generated token B x max_new_tokens; the first token, from the
    prefill, ran every layer). Rows that produced `eos_token_id` are padded after it (depth 0)."""
    n_layers = len(decoder_layers(model))
    tokens, depths = [first], [torch.full_like(first, n_layers)]
    done = first == eos_token_id if eos_token_id is not None else torch.zeros_like(first, dtype=torch.bool)
    mask = attention_mask
    for _ in range(max_new_tokens - 1):
        if bool(done.all()):
            tokens.append(torch.full_like(first, pad_token_id))
            depths.append(torch.zeros_like(first))
            continue
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        logits, depth = dynamic_step(model, tokens[-1], mask, cache, gate)
        nxt = torch.where(done, torch.full_like(first, pad_token_id), logits.argmax(-1))
        depths.append(torch.where(done, torch.zeros_like(depth), depth))
        if eos_token_id is not None:
            done = done | (nxt == eos_token_id)
        tokens.append(nxt)
    return torch.stack(tokens, 1), torch.stack(depths, 1)


@torch.inference_mode()
def dynamic_generate(model, batch: dict, max_new_tokens: int, gate: DepthGate, eos_token_id: int | None = None):
    """Greedy generation with per-token depth: the prompt's prefill runs every layer, each new token
    exits by `gate`. Returns (ids B x max_new_tokens, layers run per token)."""
    cache = DynamicCache(config=model.config)
    logits = model(**batch, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
    return dynamic_continue(model, logits.argmax(-1), batch["attention_mask"], cache, max_new_tokens, gate, eos_token_id)


@torch.inference_mode()
def forced_logits(model, batch: dict, start: int, stop: int, gate: DepthGate):
    """Teacher-forced logits under `gate` at columns start..stop-1 of a left-padded batch (prompt and a
    given continuation): the prefill up to column `start` runs every layer, each later column is one
    dynamic step. Returns (logits B x (stop - start) x vocab, float32; layers run, B x (stop - start))."""
    cache = DynamicCache(config=model.config)
    prompt = {k: v[:, :start + 1] for k, v in batch.items()}
    first = model(**prompt, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
    rows, n_layers = batch["input_ids"].shape[0], len(decoder_layers(model))
    logits, depths = [first.float()], [torch.full((rows,), n_layers, device=first.device)]
    for column in range(start + 1, stop):
        step, depth = dynamic_step(model, batch["input_ids"][:, column], batch["attention_mask"][:, :column + 1],
                                   cache, gate)
        logits.append(step.float())
        depths.append(depth)
    return torch.stack(logits, 1), torch.stack(depths, 1)
