"""Quality of a skipped model against the full model, teacher-forced on the full model's own
greedy continuation: KL(full || skipped), top-1 agreement and top-5 overlap per position.

Scoring a short continuation, not only the next token, is far less noisy (many positions per
prompt) and measures what generation would see, without letting errors compound.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ais.decode import context_length, encode_prompts, generate_ids
from ais.skip import NO_SKIP, SkipPlan, skipping


@dataclass
class Reference:
    """A batch of prompts with the full model's continuation, and the full model's
    log-probabilities at the scored positions (last prompt token + continuation but its last)."""

    batch: dict            # input_ids / attention_mask of prompt + continuation, left-padded
    score_mask: torch.Tensor   # B x T bool: positions whose next-token distribution is scored
    full_logprobs: torch.Tensor  # n_scored x vocab, float32


@torch.inference_mode()
def make_reference(model, tokenizer, prompts: list[str], n_continuation: int) -> Reference:
    """Generate the full model's greedy continuation and record its next-token distributions."""
    batch = encode_prompts(tokenizer, prompts, model.device, context_length(model) - n_continuation - 1)
    prompt_len = batch["input_ids"].shape[1]
    if n_continuation > 0:
        # no early stop, so every row has the same number of scored positions
        new = generate_ids(model, batch, NO_SKIP, n_continuation, eos_token_id=-1)
        ids = torch.cat([batch["input_ids"], new], 1)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(new)], 1)
    else:
        ids, mask = batch["input_ids"], batch["attention_mask"]
    full = {"input_ids": ids, "attention_mask": mask}
    score_mask = torch.zeros_like(ids, dtype=torch.bool)
    score_mask[:, prompt_len - 1: max(prompt_len, ids.shape[1] - 1)] = True
    return Reference(full, score_mask, _logprobs(model, full, score_mask, NO_SKIP))


def _logprobs(model, batch, score_mask, plan: SkipPlan) -> torch.Tensor:
    with skipping(model, plan):
        logits = model(**batch, use_cache=False).logits
    return torch.log_softmax(logits[score_mask].float(), dim=-1)


@torch.inference_mode()
def compare(model, ref: Reference, plan: SkipPlan) -> dict:
    """Per-prompt mean KL(full || plan), top-1 agreement and top-5 overlap (tensors of length B)."""
    logprobs = _logprobs(model, ref.batch, ref.score_mask, plan)
    full = ref.full_logprobs
    kl = (full.exp() * (full - logprobs)).sum(-1).clamp_min(0)
    top1 = (full.argmax(-1) == logprobs.argmax(-1)).float()
    top5_full, top5_skip = full.topk(5, -1).indices, logprobs.topk(5, -1).indices
    overlap = (top5_full.unsqueeze(-1) == top5_skip.unsqueeze(-2)).any(-1).float().mean(-1)
    rows = ref.score_mask.sum(1).tolist()
    split = lambda t: torch.stack([part.mean() for part in torch.split(t, rows)])
    return {"kl": split(kl), "top1": split(top1), "top5": split(overlap)}


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
