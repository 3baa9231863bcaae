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

from dataclasses import dataclass, field

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
    prefills: dict = field(default_factory=dict, repr=False, compare=False)  # engine -> the prompt's prefill
    _full_terms: tuple | None = field(default=None, repr=False, compare=False)

    def full_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What every comparison with the full model takes from its log-probabilities (their exp, top-1
        and top-5 tokens), computed once per reference (`compare_logprobs`'s `terms`)."""
        if self._full_terms is None:
            self._full_terms = full_terms(self.full_logprobs)
        return self._full_terms

    def prefilled(self, engine: Engine):
        """(the batch in flight after the prompt's prefill through every layer, the first column's
        log-probabilities): the prefill runs once per reference and engine, and each call gets its own
        copy of the cache (what follows replaces the cache's tensors, never writes into them)."""
        if engine not in self.prefills:
            flight, first = prefill(engine, {k: v[:, :self.columns.start + 1] for k, v in self.batch.items()})
            self.prefills[engine] = (flight, torch.log_softmax(first.float(), -1))
        flight, first = self.prefills[engine]
        return flight.copy(), first

    def __len__(self) -> int:
        return int(self.scored.shape[0])

    def rows(self, rows: list[int]) -> "Reference":
        """The reference of some rows, without the padding columns none of them needs."""
        mask = self.batch["attention_mask"][rows]
        drop = int((mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-padding columns
        batch = {k: v[rows][:, drop:] for k, v in self.batch.items()}
        columns = slice(self.columns.start - drop, self.columns.stop - drop)
        out = Reference(batch, columns, self.full_logprobs[rows], self.scored[rows], self.engine, self.protocol)
        out.parent, out.parent_rows = getattr(self, "parent", None) or self, [
            getattr(self, "parent_rows", list(range(len(self))))[r] for r in rows]
        return out

    def score_rows(self, plans_per_row: list[list[SkipPlan]]) -> list[list[dict]]:
        """{top1, kl} of each row under each of its own plans (every row the same number), all in one
        shared pass: for searches that advance on several prompts at once."""
        count = len(plans_per_row[0])
        found = score_conditions(self.engine, self, {c: [row[c] for row in plans_per_row] for c in range(count)},
                                 self.protocol)
        return [[{k: float(found[c][k][r]) for k in ("top1", "kl")} for c in range(count)]
                for r in range(len(plans_per_row))]

    def restricted(self, part: str) -> "Reference":
        """The same reference scored on one half of its positions only (`early` | `late`). The early
        half is cut to its columns (what the later columns hold cannot change them, in either protocol),
        so scoring it costs half."""
        scored = halves(self.scored)[part]
        if part != "early":
            return Reference(self.batch, self.columns, self.full_logprobs, scored, self.engine, self.protocol,
                             self.prefills)
        middle = max(1, self.scored.shape[1] // 2)
        stop = self.columns.start + middle
        return Reference({k: v[:, :stop + 1] for k, v in self.batch.items()}, slice(self.columns.start, stop),
                         self.full_logprobs[:, :middle], scored[:, :middle], self.engine, self.protocol, self.prefills)

    @staticmethod
    def join(references: list["Reference"]) -> "Reference | None":
        """The rows of several one-row views of one reference as one reference (None where they come
        from different references)."""
        parents = {id(getattr(r, "parent", None)) for r in references}
        if len(parents) != 1 or getattr(references[0], "parent", None) is None:
            return None
        return references[0].parent.rows([row for r in references for row in r.parent_rows])

    def score(self, plans: list[SkipPlan]) -> list[dict]:
        """Mean top-1 agreement and KL over this reference's rows of each plan (every row under each
        plan, by `protocol`, all plans in one shared pass), for searches that rank plans."""
        found = score_conditions(self.engine, self, {i: [plan] * len(self) for i, plan in enumerate(plans)},
                                 self.protocol)
        return [{k: float(v.mean()) for k, v in found[i].items()} for i in range(len(plans))]


@torch.inference_mode()
def continuation(engine: Engine, tokenizer, prompts: list[str], n_continuation: int) -> Reference:
    """The full model's greedy continuation of each prompt, as a Reference without its
    log-probabilities (`make_reference` adds them; the reference stage keeps states instead)."""
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
    return Reference(batch, columns, None, scored, engine)


def make_reference(engine: Engine, tokenizer, prompts: list[str], n_continuation: int,
                   protocol: str = "forced") -> Reference:
    """The full model's greedy continuation and its next-token distributions by `protocol`."""
    ref = continuation(engine, tokenizer, prompts, n_continuation)
    ref.full_logprobs = (forced_logprobs if protocol == "forced" else decode_logprobs)(engine, ref, None)
    ref.protocol = protocol
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
def forced_states(engine: Engine, ref: Reference, plans) -> torch.Tensor:
    """The last layer's states at the reference's columns, prompt and continuation in one forward under
    each row's plan."""
    hidden = engine.forward(ref.batch["input_ids"], ref.batch["attention_mask"], plans)
    return hidden[:, ref.columns]


@torch.inference_mode()
def decode_states(engine: Engine, ref: Reference, plans) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The last layer's states with each row's plan applied to the generated tokens only: (the prompt's
    last position after its prefill through every layer, B x 1 x d; the continuation's, run in one
    cached forward under the plans, or None where only the first token is scored)."""
    start, stop = ref.columns.start, ref.columns.stop
    flight = engine.start(ref.batch["attention_mask"][:, :start + 1])
    x, ctx = flight.feed(ref.batch["input_ids"][:, :start + 1])
    first = flight.run(x, ctx)[:, -1:]
    flight.set_plans(plans)
    if stop - start == 1:
        return first, None
    return first, flight.step(ref.batch["input_ids"][:, start + 1:stop], logits=False)


def logprobs_of(engine: Engine, states, protocol: str) -> torch.Tensor:
    """Log-probabilities (float32) from last-layer states: forced (B x n x d), or decode ((first, rest)),
    whose first column is the prefill's, as `logits_to_keep=1` computes it."""
    if protocol == "forced":
        return _logprobs(engine, states)
    first, rest = states
    first = torch.log_softmax(engine.last_logits(first).float(), -1)[:, None]
    return first if rest is None else torch.cat([first, _logprobs(engine, rest)], 1)


def forced_logprobs(engine: Engine, ref: Reference, plans) -> torch.Tensor:
    """Log-probabilities at the reference's columns, prompt and continuation in one forward under each
    row's plan; only the scored positions go through the head."""
    return logprobs_of(engine, forced_states(engine, ref, plans), "forced")


def decode_logprobs(engine: Engine, ref: Reference, plans) -> torch.Tensor:
    """Log-probabilities at the reference's columns with each row's plan applied to the generated
    tokens only: the prompt's prefill runs every layer (filling the cache; it predicts the first
    token), then the continuation runs in one cached forward under the plans."""
    return logprobs_of(engine, decode_states(engine, ref, plans), "decode")


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


@torch.inference_mode()
def score_gates(engine: Engine, ref: Reference, gates: dict, split: bool = False) -> dict[str, tuple[dict[str, np.ndarray], torch.Tensor]]:
    """{gate name: (per-row KL / top-1 / top-5, layers run per column B x n)} of several per-token gates
    on one reference, in one stepwise pass: the prompt's prefill runs once through every layer, then
    every row fans out into one row per gate and each later column is one gated step (as
    `decode_gated`, every gate at once)."""
    names = list(gates)
    n, g = len(ref), len(names)
    start, stop = ref.columns.start, ref.columns.stop
    flight, first = prefill(engine, {k: v[:, :start + 1] for k, v in ref.batch.items()})
    flight.repeat_rows(g)
    per_row = [gates[name] for _ in range(n) for name in names]
    members = torch.arange(n * g, device=first.device) // g
    logits = [first.float()[members]]
    depths = [torch.full((n * g,), engine.n_layers, device=first.device)]
    for column in range(start + 1, stop):
        step = flight.step(ref.batch["input_ids"][:, column:column + 1].repeat_interleave(g, 0), gate=per_row)
        logits.append(step.float())
        depths.append(flight.depth)
    logprobs, depth = torch.log_softmax(torch.stack(logits, 1), -1), torch.stack(depths, 1)
    out = {}
    for c, name in enumerate(names):
        rows = torch.arange(c, n * g, g, device=first.device)
        scores = compare_logprobs(ref.full_logprobs, logprobs[rows], ref.scored, split, ref.full_terms())
        out[name] = ({k: v.cpu().numpy() for k, v in scores.items()}, depth[rows])
    return out


def halves(scored: torch.Tensor) -> dict[str, torch.Tensor]:
    """The scored positions split at the middle column: `early` (the first half of the continuation's
    columns) and `late` (the rest), for searching on one and scoring on the other."""
    middle = scored.shape[1] // 2
    columns = torch.arange(scored.shape[1], device=scored.device)
    return {"early": scored * (columns < middle), "late": scored * (columns >= middle)}


def full_terms(full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(exp, top-1, top-5 indices) of the full model's log-probabilities, as `compare_logprobs` uses them."""
    return full.exp(), full.argmax(-1), full.topk(5, -1).indices


def _kl_terms(full: torch.Tensor, exp: torch.Tensor, logprobs: torch.Tensor, members: torch.Tensor | None) -> torch.Tensor:
    """sum over the vocabulary of exp(full) * (full - logprobs), per row and position, row r against
    row members[r] of `full`. Runs of one repeated row broadcast it and runs of consecutive rows slice
    them, so `full` is not gathered (the same values; a one-column block is gathered, so that no sum
    has a single output, which the CPU would split across threads)."""
    if members is None:
        return (exp * (full - logprobs)).sum(-1)
    if logprobs.shape[1] == 1:
        return (exp[members] * (full[members] - logprobs)).sum(-1)
    rows, out, r = members.tolist(), [], 0
    while r < len(rows):
        first, k = rows[r], 1
        if r + 1 < len(rows) and rows[r + 1] == first:
            while r + k < len(rows) and rows[r + k] == first:
                k += 1
            e, f = exp[first][None], full[first][None]
        else:
            while r + k < len(rows) and rows[r + k] == first + k:
                k += 1
            e, f = exp[first:first + k], full[first:first + k]
        out.append((e * (f - logprobs[r:r + k])).sum(-1))
        r += k
    return torch.cat(out)


def compare_logprobs(full: torch.Tensor, logprobs, scored: torch.Tensor, split: bool = False,
                     terms: tuple | None = None, members: torch.Tensor | None = None) -> dict:
    """Per-prompt mean over the scored positions of KL(full || other), top-1 agreement and top-5
    overlap between two B x positions x vocab log-probability tensors; with `split`, the same over the
    early and late halves of the positions too (`top1_late`, ...; NaN for a row with none scored).
    `logprobs` may come as a list of column blocks (not joined); with `members`, row r is compared with
    row members[r] of `full` (not gathered); `terms`: `full_terms(full)` where already computed.
    The values are those of the one-tensor call on the gathered rows."""
    blocks = list(logprobs) if isinstance(logprobs, (list, tuple)) else [logprobs]
    exp, top1_full, top5_full = terms if terms is not None else full_terms(full)
    if members is not None:
        top1_full, top5_full = top1_full[members], top5_full[members]
    kl, top1, overlap, at = [], [], [], 0
    for block in blocks:
        columns = slice(at, at + block.shape[1])
        at += block.shape[1]
        kl.append(_kl_terms(full[:, columns], exp[:, columns], block, members))
        top1.append((top1_full[:, columns] == block.argmax(-1)).float())
        top5 = block.topk(5, -1).indices
        overlap.append((top5_full[:, columns].unsqueeze(-1) == top5.unsqueeze(-2)).any(-1).float().mean(-1))
    kl, top1, overlap = torch.cat(kl, 1).clamp_min(0), torch.cat(top1, 1), torch.cat(overlap, 1)
    masks = {"": scored, **({f"_{k}": v for k, v in halves(scored).items()} if split else {})}
    out = {}
    for suffix, mask in masks.items():
        total = mask.sum(1, keepdim=True)
        weights = mask / total.clamp_min(1e-12)
        none = total[:, 0] == 0
        for name, values in (("kl", kl), ("top1", top1), ("top5", overlap)):
            mean = (values * weights).sum(1)
            out[name + suffix] = mean if not suffix else torch.where(none, torch.full_like(mean, float("nan")), mean)
    return out


def first_changed_layer(plans: list[SkipPlan], n_layers: int) -> int:
    """The lowest layer any of the plans touches (n_layers when none touches any)."""
    return min((min(p.touched) for p in plans if not p.is_empty()), default=n_layers)


@torch.inference_mode()
def _fanned_states(engine: Engine, ref: Reference, plans: list[SkipPlan], repeats: int, protocol: str):
    """The last layer's states at the reference's scored columns for every (row, plan) pair: row r's
    i-th copy under plans[r * repeats + i]. What no plan changes (the layers below the lowest layer
    any plan touches; for `decode`, the prompt's prefill too) runs once per row, then the rows fan out.
    Returns (states of the computed columns, the first column's log-probabilities from the prefill
    for `decode`, else None)."""
    at = first_changed_layer(plans, engine.n_layers)
    ids, mask = ref.batch["input_ids"], ref.batch["attention_mask"]
    if protocol == "forced":
        x = engine.embed(ids)
        ctx = engine.context(x, mask)
        shared = engine.run(x, ctx, 0, at)
        fanned = engine.run(shared.repeat_interleave(repeats, 0), ctx.repeated(repeats, None), at, None,
                            engine.plans(plans, len(plans)))
        return fanned[:, ref.columns], None
    if protocol != "decode":
        raise ValueError(f"protocol={protocol!r} must be 'forced' or 'decode'")
    start, stop = ref.columns.start, ref.columns.stop
    flight, first = ref.prefilled(engine)  # the same prompt's prefill for every call on this reference
    if stop - start == 1:
        return None, first
    x, ctx = flight.feed(ids[:, start + 1:stop])
    shared = flight.run(x, ctx, 0, at)
    fanned, ctx = flight.fan_out(repeats, shared, ctx, at, plans)
    return flight.run(fanned, ctx, at), first


def score_conditions(engine: Engine, ref: Reference, conditions: dict[str, list[SkipPlan]], protocol: str = "forced",
                     max_rows: int = 256, head_rows: int = 32, split: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """{condition: per-row KL / top-1 / top-5} for several conditions on one reference, each row under
    its condition's plan for it, by `protocol` (forced | decode). The conditions share one pass:
    what none of them changes runs once, then every row fans out into one row per condition (at most
    `max_rows` rows at a time); the head runs `head_rows` rows at a time."""
    names, n = list(conditions), len(ref)
    out = {name: {} for name in names}
    per = max(1, max_rows // max(1, n))
    for at in range(0, len(names), per):
        group = names[at:at + per]
        plans = [conditions[name][r] for r in range(n) for name in group]
        states, first = _fanned_states(engine, ref, plans, len(group), protocol)
        rows = n * len(group)
        metrics = {}
        for lo in range(0, rows, head_rows):
            hi = min(rows, lo + head_rows)
            members = torch.arange(lo, hi) // len(group)   # the reference row of each fanned row
            parts = [] if first is None else [first[members][:, None]]
            if states is not None:
                parts.append(_logprobs(engine, states[lo:hi]))
            scores = compare_logprobs(ref.full_logprobs, parts, ref.scored[members], split, ref.full_terms(), members)
            for key, values in scores.items():
                metrics.setdefault(key, np.zeros(rows))[lo:hi] = values.cpu().numpy()
        for c, name in enumerate(group):
            out[name] = {key: values[c::len(group)] for key, values in metrics.items()}
    return out


def score(engine: Engine, ref: Reference, plans: list[SkipPlan], protocol: str = "forced") -> dict[str, np.ndarray]:
    """Per-row KL / top-1 / top-5 of each row under its own plan (one pass, rows mixed), by `protocol`
    (forced | decode)."""
    return score_conditions(engine, ref, {"plans": plans}, protocol)["plans"]


__all__ = ["METRICS", "NO_SKIP", "Reference", "compare_logprobs", "decode_gated", "decode_logprobs", "eos_mask",
           "continuation", "forced_logprobs", "make_reference", "score", "score_conditions"]
