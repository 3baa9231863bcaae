"""Quality of a skipped model against the full model, teacher-forced on the full model's own
greedy continuation: KL(full || skipped), top-1 agreement and top-5 overlap per position.

Scoring a short continuation, not only the next token, is far less noisy (many positions per
prompt) and measures what generation would see, without letting errors compound. The continuation
stops at the full model's end-of-sequence token: the position that predicts it is scored, later
positions (text the model would never have written) are not.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ais.decoding.greedy import plain_generate
from ais.model.prompts import context_length, encode_prompts
from ais.model.gating import NO_SKIP, SkipPlan, skipping


@dataclass
class Reference:
    """A batch of prompts with the full model's continuation. Every row is scored at the same
    columns (the last prompt token and the continuation but its last token)."""

    batch: dict                  # input_ids / attention_mask of prompt + continuation, left-padded
    columns: slice               # the positions computed for scoring
    full_logprobs: torch.Tensor  # B x n_columns x vocab, float32
    scored: torch.Tensor         # B x n_columns, 1.0 up to and including the end-of-sequence prediction

    def rows(self, rows: list[int]) -> "Reference":
        """The reference of some rows, without the padding columns none of them needs."""
        mask = self.batch["attention_mask"][rows]
        drop = int((mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-padding columns
        batch = {k: v[rows][:, drop:] for k, v in self.batch.items()}
        columns = slice(self.columns.start - drop, self.columns.stop - drop)
        return Reference(batch, columns, self.full_logprobs[rows], self.scored[rows])


@torch.inference_mode()
def make_reference(model, tokenizer, prompts: list[str], n_continuation: int) -> Reference:
    """Generate the full model's greedy continuation and record its next-token distributions."""
    batch = encode_prompts(tokenizer, prompts, model.device, context_length(model) - n_continuation - 1)
    prompt_len = batch["input_ids"].shape[1]
    scored = torch.ones((batch["input_ids"].shape[0], max(1, n_continuation)), device=model.device)
    if n_continuation > 0:
        # generated without early stop (every row has the same columns), then masked after the end
        new = plain_generate(model, batch, n_continuation)
        scored = eos_mask(new, tokenizer.eos_token_id)
        batch = {"input_ids": torch.cat([batch["input_ids"], new], 1),
                 "attention_mask": torch.cat([batch["attention_mask"], torch.ones_like(new)], 1)}
    columns = slice(prompt_len - 1, max(prompt_len, batch["input_ids"].shape[1] - 1))
    return Reference(batch, columns, _logprobs(model, batch, columns, NO_SKIP), scored)


def eos_mask(new_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """1.0 for each generated position up to and including the first end-of-sequence token, else 0.
    Column c is the prediction of new token c, so the prediction of the end itself is scored."""
    if eos_token_id is None:
        return torch.ones(new_ids.shape, device=new_ids.device)
    ended_before = (new_ids == eos_token_id).long().cumsum(1) - (new_ids == eos_token_id).long()
    return (ended_before == 0).float()


def _logprobs(model, batch, columns: slice, plan: SkipPlan) -> torch.Tensor:
    """Log-probabilities at `columns` only: the vocabulary projection of the prompt's other
    positions, which nothing scores, is not computed (`logits_to_keep`)."""
    width = batch["input_ids"].shape[1]
    with skipping(model, plan):
        logits = model(**batch, use_cache=False, logits_to_keep=width - columns.start).logits
    return torch.log_softmax(logits[:, : columns.stop - columns.start].float(), dim=-1)


@torch.inference_mode()
def compare(model, ref: Reference, plan: SkipPlan) -> dict:
    """Per-prompt mean over the scored positions of KL(full || plan), top-1 agreement and top-5
    overlap (tensors of length B)."""
    return compare_logprobs(ref.full_logprobs, _logprobs(model, ref.batch, ref.columns, plan), ref.scored)


@torch.inference_mode()
def decode_logprobs(model, ref: Reference, plan: SkipPlan = NO_SKIP) -> torch.Tensor:
    """Log-probabilities at the reference's columns with `plan` applied to the generated tokens only:
    the prompt's prefill runs every layer (filling the cache), then the continuation runs in one
    cached forward under the plan (decode-time skipping, as generation after a full prefill does)."""
    start, stop = ref.columns.start, ref.columns.stop
    cache = DynamicCache(config=model.config)
    prompt = {k: v[:, :start + 1] for k, v in ref.batch.items()}
    first = model(**prompt, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1:]
    if stop - start == 1:
        return torch.log_softmax(first.float(), -1)
    with skipping(model, plan):
        rest = model(input_ids=ref.batch["input_ids"][:, start + 1:stop],
                     attention_mask=ref.batch["attention_mask"][:, :stop], past_key_values=cache, use_cache=True).logits
    return torch.log_softmax(torch.cat([first, rest], 1).float(), -1)


def compare_logprobs(full: torch.Tensor, logprobs: torch.Tensor, scored: torch.Tensor) -> dict:
    """Per-prompt mean over the scored positions of KL(full || other), top-1 agreement and top-5
    overlap between two B x positions x vocab log-probability tensors."""
    kl = (full.exp() * (full - logprobs)).sum(-1).clamp_min(0)
    top1 = (full.argmax(-1) == logprobs.argmax(-1)).float()
    top5_full, top5_skip = full.topk(5, -1).indices, logprobs.topk(5, -1).indices
    overlap = (top5_full.unsqueeze(-1) == top5_skip.unsqueeze(-2)).any(-1).float().mean(-1)
    weights = scored / scored.sum(1, keepdim=True)
    return {"kl": (kl * weights).sum(1), "top1": (top1 * weights).sum(1), "top5": (overlap * weights).sum(1)}
