"""Quality of a skipped model against the full model, teacher-forced on the full model's own
greedy continuation: KL(full || skipped), top-1 agreement and top-5 overlap per position (the one
scorer every evaluation uses).

Scoring a short continuation, not only the next token, is far less noisy (many positions per
prompt) and measures what generation would see, without letting errors compound. The continuation
stops at the full model's end-of-sequence token: the position that predicts it is scored, later
positions (text the model would never have written) are not.

Two protocols, each row of a batch under its own plan, in one pass of the engine:
  forced — one forward of prompt and continuation under the plan (the plan skips the prompt too);
  decode — the prompt's prefill runs every layer (filling the cache), then the continuation runs
           under the plan in one cached forward (skipping while generating);
and `decode_gated`, the per-token gate one continuation position at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ais.decoding.greedy import generate, prefill
from ais.model.engine import Engine
from ais.model.plan import NO_SKIP, SkipPlan
from ais.model.prompts import context_length, encode_prompts

METRICS = ("kl", "top1", "top5")


@dataclass
class Reference:
    """A batch of prompts with the full model's continuation. Every row is scored at the same
    columns (the last prompt token and the continuation but its last token)."""

    batch: dict                  # input_ids / attention_mask of prompt + continuation, left-padded
    columns: slice               # the positions computed for scoring
    full_logprobs: torch.Tensor  # B x n_columns x vocab, float32
    scored: torch.Tensor         # B x n_columns, 1.0 up to and including the end-of-sequence prediction
    engine: Engine | None = None
    protocol: str = "decode"     # how `score` scores plans on it (forced | decode)

    def __len__(self) -> int:
        return int(self.scored.shape[0])

    def rows(self, rows: list[int]) -> "Reference":
        """The reference of some rows, without the padding columns none of them needs."""
        mask = self.batch["attention_mask"][rows]
        drop = int((mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-padding columns
        batch = {k: v[rows][:, drop:] for k, v in self.batch.items()}
        columns = slice(self.columns.start - drop, self.columns.stop - drop)
        return Reference(batch, columns, self.full_logprobs[rows], self.scored[rows], self.engine, self.protocol)

    def score(self, plans: list[SkipPlan]) -> list[dict]:
        """Mean top-1 agreement and KL over this reference's rows of each plan (every row under each
        plan in turn, by `protocol`), for searches that rank plans."""
        out = []
        for plan in plans:
            metrics = score(self.engine, self, [plan] * len(self), self.protocol)
            out.append({k: float(v.mean()) for k, v in metrics.items()})
        return out


@torch.inference_mode()
def make_reference(engine: Engine, tokenizer, prompts: list[str], n_continuation: int) -> Reference:
    """Generate the full model's greedy continuation and record its next-token distributions."""
    model = engine.model
    batch = encode_prompts(tokenizer, prompts, model.device, context_length(model) - n_continuation - 1)
    prompt_len = batch["input_ids"].shape[1]
    scored = torch.ones((batch["input_ids"].shape[0], max(1, n_continuation)), device=model.device)
    if n_continuation > 0:
        # generated without early stop (every row has the same columns), then masked after the end
        new = generate(engine, batch, n_continuation)
        scored = eos_mask(new, tokenizer.eos_token_id)
        batch = {"input_ids": torch.cat([batch["input_ids"], new], 1),
                 "attention_mask": torch.cat([batch["attention_mask"], torch.ones_like(new)], 1)}
    columns = slice(prompt_len - 1, max(prompt_len, batch["input_ids"].shape[1] - 1))
    ref = Reference(batch, columns, None, scored, engine)
    ref.full_logprobs = forced_logprobs(engine, ref, None)
    return ref


def eos_mask(new_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """1.0 for each generated position up to and including the first end-of-sequence token, else 0.
    Column c is the prediction of new token c, so the prediction of the end itself is scored."""
    if eos_token_id is None:
        return torch.ones(new_ids.shape, device=new_ids.device)
    ended_before = (new_ids == eos_token_id).long().cumsum(1) - (new_ids == eos_token_id).long()
    return (ended_before == 0).float()


def _logprobs(engine: Engine, hidden: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(engine.head(hidden).float(), -1)


@torch.inference_mode()
def forced_logprobs(engine: Engine, ref: Reference, plans) -> torch.Tensor:
    """Log-probabilities at the reference's columns, prompt and continuation in one forward under each
    row's plan; only the scored positions go through the head."""
    hidden = engine.forward(ref.batch["input_ids"], ref.batch["attention_mask"], plans)
    return _logprobs(engine, hidden[:, ref.columns])


@torch.inference_mode()
def decode_logprobs(engine: Engine, ref: Reference, plans) -> torch.Tensor:
    """Log-probabilities at the reference's columns with each row's plan applied to the generated
    tokens only: the prompt's prefill runs every layer (filling the cache; it predicts the first
    token), then the continuation runs in one cached forward under the plans."""
    start, stop = ref.columns.start, ref.columns.stop
    prompt = {k: v[:, :start + 1] for k, v in ref.batch.items()}
    flight, first = prefill(engine, prompt, None, plans)
    first = torch.log_softmax(first.float(), -1)[:, None]
    if stop - start == 1:
        return first
    hidden = flight.step(ref.batch["input_ids"][:, start + 1:stop], logits=False)
    return torch.cat([first, _logprobs(engine, hidden)], 1)


@torch.inference_mode()
def decode_gated(engine: Engine, ref: Reference, gate) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probabilities under the per-token `gate`: the prefill up to the first scored
    column runs every layer, each later column is one gated step. Returns (log-probabilities B x n x
    vocab, layers run per column B x n; the first column, from the prefill, ran every layer)."""
    start, stop = ref.columns.start, ref.columns.stop
    prompt = {k: v[:, :start + 1] for k, v in ref.batch.items()}
    flight, first = prefill(engine, prompt)
    rows = first.shape[0]
    logits, depths = [first.float()], [torch.full((rows,), engine.n_layers, device=first.device)]
    for column in range(start + 1, stop):
        logits.append(flight.step(ref.batch["input_ids"][:, column:column + 1], gate=gate).float())
        depths.append(flight.depth)
    return torch.log_softmax(torch.stack(logits, 1), -1), torch.stack(depths, 1)


def compare_logprobs(full: torch.Tensor, logprobs: torch.Tensor, scored: torch.Tensor) -> dict:
    """Per-prompt mean over the scored positions of KL(full || other), top-1 agreement and top-5
    overlap between two B x positions x vocab log-probability tensors."""
    kl = (full.exp() * (full - logprobs)).sum(-1).clamp_min(0)
    top1 = (full.argmax(-1) == logprobs.argmax(-1)).float()
    top5_full, top5_skip = full.topk(5, -1).indices, logprobs.topk(5, -1).indices
    overlap = (top5_full.unsqueeze(-1) == top5_skip.unsqueeze(-2)).any(-1).float().mean(-1)
    weights = scored / scored.sum(1, keepdim=True).clamp_min(1e-12)
    return {"kl": (kl * weights).sum(1), "top1": (top1 * weights).sum(1), "top5": (overlap * weights).sum(1)}


def score(engine: Engine, ref: Reference, plans: list[SkipPlan], protocol: str = "forced") -> dict[str, np.ndarray]:
    """Per-row KL / top-1 / top-5 of each row under its own plan (one pass, rows mixed), by `protocol`
    (forced | decode)."""
    if protocol == "forced":
        logprobs = forced_logprobs(engine, ref, plans)
    elif protocol == "decode":
        logprobs = decode_logprobs(engine, ref, plans)
    else:
        raise ValueError(f"protocol={protocol!r} must be 'forced' or 'decode'")
    return {k: v.cpu().numpy() for k, v in compare_logprobs(ref.full_logprobs, logprobs, ref.scored).items()}


def score_conditions(engine: Engine, ref: Reference, conditions: dict[str, list[SkipPlan]],
                     protocol: str = "forced") -> dict[str, dict[str, np.ndarray]]:
    """{condition: per-row metrics} for several conditions on one reference (each condition's rows in one pass)."""
    return {name: score(engine, ref, plans, protocol) for name, plans in conditions.items()}


__all__ = ["METRICS", "NO_SKIP", "Reference", "compare_logprobs", "decode_gated", "decode_logprobs", "eos_mask",
           "forced_logprobs", "make_reference", "score", "score_conditions"]
