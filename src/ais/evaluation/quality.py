"""Quality of a skipped model against the full model, teacher-forced on the full model's own
greedy continuation: KL(full || skipped), top-1 agreement and top-5 overlap per position.

Scoring a short continuation, not only the next token, is far less noisy (many positions per
prompt) and measures what generation would see, without letting errors compound.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ais.decoding.greedy import plain_generate
from ais.model.prompts import context_length, encode_prompts
from ais.model.gating import NO_SKIP, SkipPlan, skipping


@dataclass
class Reference:
    """A batch of prompts with the full model's continuation. Every row is scored at the same
    columns (the last prompt token and the continuation but its last token)."""

    batch: dict                  # input_ids / attention_mask of prompt + continuation, left-padded
    columns: slice               # the scored positions
    full_logprobs: torch.Tensor  # B x n_scored x vocab, float32

    def rows(self, rows: list[int]) -> "Reference":
        """The reference of some rows, without the padding columns none of them needs."""
        mask = self.batch["attention_mask"][rows]
        drop = int((mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-padding columns
        batch = {k: v[rows][:, drop:] for k, v in self.batch.items()}
        columns = slice(self.columns.start - drop, self.columns.stop - drop)
        return Reference(batch, columns, self.full_logprobs[rows])


@torch.inference_mode()
def make_reference(model, tokenizer, prompts: list[str], n_continuation: int) -> Reference:
    """Generate the full model's greedy continuation and record its next-token distributions."""
    batch = encode_prompts(tokenizer, prompts, model.device, context_length(model) - n_continuation - 1)
    prompt_len = batch["input_ids"].shape[1]
    if n_continuation > 0:
        # no early stop, so every row has the same number of scored positions
        new = plain_generate(model, batch, n_continuation)
        batch = {"input_ids": torch.cat([batch["input_ids"], new], 1),
                 "attention_mask": torch.cat([batch["attention_mask"], torch.ones_like(new)], 1)}
    columns = slice(prompt_len - 1, max(prompt_len, batch["input_ids"].shape[1] - 1))
    return Reference(batch, columns, _logprobs(model, batch, columns, NO_SKIP))


def _logprobs(model, batch, columns: slice, plan: SkipPlan) -> torch.Tensor:
    with skipping(model, plan):
        logits = model(**batch, use_cache=False).logits
    return torch.log_softmax(logits[:, columns].float(), dim=-1)


@torch.inference_mode()
def compare(model, ref: Reference, plan: SkipPlan) -> dict:
    """Per-prompt mean KL(full || plan), top-1 agreement and top-5 overlap (tensors of length B)."""
    logprobs = _logprobs(model, ref.batch, ref.columns, plan)
    full = ref.full_logprobs
    kl = (full.exp() * (full - logprobs)).sum(-1).clamp_min(0)
    top1 = (full.argmax(-1) == logprobs.argmax(-1)).float()
    top5_full, top5_skip = full.topk(5, -1).indices, logprobs.topk(5, -1).indices
    overlap = (top5_full.unsqueeze(-1) == top5_skip.unsqueeze(-2)).any(-1).float().mean(-1)
    return {"kl": kl.mean(1), "top1": top1.mean(1), "top5": overlap.mean(1)}


@torch.inference_mode()
def block_influence(model, batch: dict) -> torch.Tensor:
    """ShortGPT's Block Influence per layer: 1 - cos(layer input, layer output), averaged over the
    batch's real tokens; a training-free prior (n_layers values, higher = the layer changes more)."""
    mask = batch["attention_mask"].bool()
    values: dict[int, torch.Tensor] = {}

    def hook(idx):
        def record(module, args, output):
            x_in, x_out = args[0][mask].float(), output[mask].float()
            values[idx] = (1 - torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1)).mean()
        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(model.model.layers)]
    try:
        model.model(**batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([values[i] for i in range(len(values))])
