"""Plain greedy decoding under a static skip plan (the same plan for every row): transformers'
`generate`, and the project's own cached loop, which the routed decoder continues from its
prefix and which the benchmarks use as an even-handed baseline."""
from __future__ import annotations

import copy

import torch
from transformers import DynamicCache

from ais.model.gating import NO_SKIP, SkipPlan, group_by_plan, skipping
from ais.model.prompts import context_length, encode_prompts


@torch.inference_mode()
def next_token_logits(model, batch: dict, plan: SkipPlan = NO_SKIP) -> torch.Tensor:
    """Next-token logits (B x vocab, float32) at the last position of each left-padded row: the
    plain transformers forward (`logits_to_keep=1`) under `plan`."""
    with skipping(model, plan):
        return model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1, :].float()


@torch.inference_mode()
def generate_ids(model, batch: dict, plan: SkipPlan = NO_SKIP, max_new_tokens: int = 32, use_cache: bool = True,
                 eos_token_id=None) -> torch.Tensor:
    """Greedy continuation token ids (B x new), KV-cached by default; rows that ended are padded."""
    kwargs = {}
    if eos_token_id is not None:
        kwargs["eos_token_id"] = eos_token_id
    with skipping(model, plan):
        out = model.generate(
            **batch, do_sample=False, max_new_tokens=max_new_tokens, use_cache=use_cache,
            pad_token_id=model.generation_config.pad_token_id or 0, top_p=None, top_k=None, temperature=None,
            **kwargs,
        )
    return out[:, batch["input_ids"].shape[1]:]


def generate_text(model, tokenizer, prompts: list[str], plan: SkipPlan = NO_SKIP, max_new_tokens: int = 32) -> list[str]:
    """Greedy replies to chat prompts under `plan`."""
    batch = encode_prompts(tokenizer, prompts, model.device, context_length(model) - max_new_tokens)
    new = generate_ids(model, batch, plan, max_new_tokens, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(new, skip_special_tokens=True)


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


def rows_cache(cache, rows: list[int], split: bool):
    """The cache some rows continue on: the batch's own when they are the whole batch (`split` false),
    else a copy holding only their rows (each plan's sub-batch extends its own)."""
    if not split:
        return cache
    sub = copy.deepcopy(cache)
    sub.batch_select_indices(torch.tensor(rows, device=cache.layers[0].keys.device))
    return sub


@torch.inference_mode()
def continue_with_plans(model, first: torch.Tensor, attention_mask: torch.Tensor, cache, plans: list[SkipPlan],
                        max_new_tokens: int, eos_token_id: int | None = None) -> torch.Tensor:
    """Greedy decoding from a filled cache with each row's own plan (B x max_new_tokens): rows that
    share a plan continue as one sub-batch on their own copy of the cache."""
    groups = group_by_plan(plans)
    out = torch.empty((first.shape[0], max_new_tokens), dtype=torch.long, device=first.device)
    for plan, rows in groups.items():
        with skipping(model, plan):
            out[rows] = greedy_continue(model, first[rows], attention_mask[rows], rows_cache(cache, rows, len(groups) > 1),
                                        max_new_tokens, eos_token_id)
    return out


@torch.inference_mode()
def generate_after_full_prefill(model, batch: dict, max_new_tokens: int, plans: list[SkipPlan],
                                eos_token_id: int | None = None) -> torch.Tensor:
    """Greedy generation whose prompt prefill runs every layer and whose generated tokens skip
    each row's plan (decode-time skipping)."""
    cache = DynamicCache(config=model.config)
    logits = model(**batch, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
    return continue_with_plans(model, logits.argmax(-1), batch["attention_mask"], cache, plans, max_new_tokens,
                               eos_token_id)
