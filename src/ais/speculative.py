"""Lossless speculative decoding (greedy, batch size 1): a cheap drafter proposes up to `gamma`
tokens, one full-model forward scores them all, the longest prefix that matches the full model's
own argmax is kept plus the full model's next token, and the KV cache of rejected positions is
rolled back. The output is the full model's greedy decoding, token for token.

Drafters:
  RoutedDraft  — the same model with the prompt's routed hard-skip plan (self-speculation);
                 stops drafting when its top-1 probability falls below `confidence`.
  PromptLookup — copies the tokens that followed the last n-gram's earlier occurrence.
  None         — plain greedy decoding with the same loop.

transformers' assisted generation takes a separate assistant model (or its own prompt-lookup);
it cannot draft with the same weights under a per-prompt skip plan, hence this short loop.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ais.skip import SkipPlan, skipping


@dataclass
class SpecStats:
    """What one generation did: verify steps, drafted and accepted tokens, seconds."""

    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    seconds: float = 0.0
    accepted_per_step: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        return self.accepted / self.steps if self.steps else 0.0


def cache_length(cache) -> int:
    return cache.get_seq_length()


def truncate_cache(cache, length: int) -> None:
    """Keep the first `length` positions in every layer that holds more (layers a draft skipped
    hold fewer and are left alone; DynamicCache.crop would cut them too)."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def _forward(model, ids: list[int], cache, device) -> torch.Tensor:
    """Logits (len(ids) x vocab) for new tokens appended to the cache (batch of one, no padding)."""
    out = model(input_ids=torch.tensor([ids], device=device), past_key_values=cache, use_cache=True)
    return out.logits[0]


class NoDraft:
    name = "none"

    def propose(self, model, context: list[int], cache, gamma: int) -> list[int]:
        return []


class PromptLookup:
    """Draft by n-gram match: find the last `ngram` tokens earlier in the context and propose
    what followed them (longest n-gram first, down to 1)."""

    name = "prompt_lookup"

    def __init__(self, ngram: int = 3):
        self.ngram = ngram

    def propose(self, model, context: list[int], cache, gamma: int) -> list[int]:
        for n in range(min(self.ngram, len(context) - 1), 0, -1):
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start:start + n] == tail:
                    follow = context[start + n:start + n + gamma]
                    if follow:
                        return follow
        return []


class RoutedDraft:
    """Draft with the model itself under a hard-skip plan, on the shared cache; the drafted
    positions are rolled back before the full model verifies them."""

    name = "routed_skip"

    def __init__(self, plan: SkipPlan, confidence: float = 0.8):
        self.plan, self.confidence = plan, confidence

    def propose(self, model, context: list[int], cache, gamma: int) -> list[int]:
        start = cache_length(cache)
        draft, last = [], context[-1]
        with skipping(model, self.plan):
            for _ in range(gamma):
                probs = torch.softmax(_forward(model, [last], cache, model.device)[-1].float(), -1)
                p, token = probs.max(-1)
                if p.item() < self.confidence and draft:
                    break
                draft.append(int(token))
                last = int(token)
                if p.item() < self.confidence:
                    break
        truncate_cache(cache, start)
        return draft


@torch.inference_mode()
def speculative_generate(model, prompt_ids: list[int], max_new_tokens: int, drafter=None, gamma: int = 4,
                         eos_token_id: int | None = None) -> tuple[list[int], SpecStats]:
    """Greedy continuation of `prompt_ids` (identical to plain greedy decoding), with drafts
    from `drafter` verified by the full model. Returns (new tokens, stats)."""
    drafter = drafter or NoDraft()
    stats = SpecStats()
    started = time.perf_counter()
    device = model.device
    cache = DynamicCache(config=model.config)
    # prefill all but the last prompt token; the loop feeds the last one with the first draft
    if len(prompt_ids) > 1:
        _forward(model, prompt_ids[:-1], cache, device)
    context = list(prompt_ids)
    new: list[int] = []
    while len(new) < max_new_tokens:
        room = max_new_tokens - len(new) - 1
        draft = drafter.propose(model, context, cache, min(gamma, room)) if room > 0 else []
        logits = _forward(model, [context[-1]] + draft, cache, device)
        predicted = logits.argmax(-1).tolist()
        accepted = 0
        while accepted < len(draft) and draft[accepted] == predicted[accepted]:
            accepted += 1
        # keep the cache of the last context token and the accepted drafts only
        truncate_cache(cache, len(context) + accepted)
        step = draft[:accepted] + [predicted[accepted]]
        stats.steps += 1
        stats.drafted += len(draft)
        stats.accepted += accepted
        stats.accepted_per_step.append(accepted)
        for token in step:
            new.append(token)
            context.append(token)
            if token == eos_token_id or len(new) == max_new_tokens:
                stats.seconds = time.perf_counter() - started
                return new, stats
    stats.seconds = time.perf_counter() - started
    return new, stats
