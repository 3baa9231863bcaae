"""Per-token depth: how many layers each generated token needs (FlexiDepth's question, measured
without training), on the full model's own greedy continuation, teacher-forced.

Two definitions, per generated token (the forward at the position that predicts it):
  saturation — the smallest d such that the logit lens (final norm and head) after layer d, and
               after every later layer, gives the model's own top-1 token: the depth an oracle
               early exit would need (d counts layers, 1..L);
  skippable  — how many layers the token alone can skip and keep its top-1: the layers past layer 0
               ordered by the token's own block influence (1 - cos(input, output), least first),
               the k least influential skipped; k found by bisection (the first k that keeps the
               top-1 with k + 1 changing it; k is not always monotone, so this is one boundary, not
               the largest). A skipped layer still writes its keys and values, computed from its
               input (it runs; its output is discarded), and every other position keeps the full
               model's states: FlexiDepth's complete cache.
Needed layers are L - skippable.

FlexiDepth's six operations are rebuilt offline: paragraphs from BIG-bench `gem/xsum` (copy,
summarise in one sentence, continue) and seeded lists of 5-10 integers in 10-99 (repeat 5 times,
sum, product). Its numbers (Llama-3-8B-Instruct, 32 layers, trained gates) are FLEXIDEPTH below.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ais.decoding.greedy import generate
from ais.evaluation.statistics import mean_interval
from ais.model.engine import Record
from ais.model.plan import SkipPlan
from ais.model.prompts import context_length, encode_prompts

FLEXIDEPTH_LAYERS = 32
FLEXIDEPTH = {"copy": 22.0, "summarise": 28.7, "continue": 30.3, "repeat": 20.1, "sum": 22.5, "product": 23.9}
ORDERINGS = (("copy", "summarise", "continue"), ("repeat", "sum", "product"))
TEXT_OPERATIONS = {
    "copy": "Copy the following paragraph exactly, word for word:\n\n{}",
    "summarise": "Summarise the following paragraph in one sentence:\n\n{}",
    "continue": "Continue writing the following paragraph:\n\n{}",
}
LIST_OPERATIONS = {
    "repeat": "Repeat the following list of numbers 5 times: {}",
    "sum": "What is the sum of the following numbers? {}",
    "product": "What is the product of the following numbers? {}",
}


def first_sentences(text: str, max_chars: int) -> str:
    """The text's whole sentences that fit in `max_chars` (at least its first `max_chars` characters
    where no sentence ends in the first half), on one line."""
    text = " ".join(text.split())[:max_chars + 1]
    end = text.rfind(". ", 0, max_chars)
    return text[:end + 1] if end >= max_chars // 2 else text[:max_chars].rstrip()


def operation_prompts(paragraphs: list[str], n: int, seed: int) -> dict[str, list[str]]:
    """n prompts for each of the six operations: the first n paragraphs (each used by all three
    text operations) and n seeded lists of 5-10 integers in 10-99 (each used by all three list
    operations)."""
    if len(paragraphs) < n:
        raise ValueError(f"need {n} paragraphs for the text operations, got {len(paragraphs)}")
    rng = random.Random(seed)
    lists = [", ".join(str(rng.randint(10, 99)) for _ in range(rng.randint(5, 10))) for _ in range(n)]
    out = {op: [template.format(p.strip()) for p in paragraphs[:n]] for op, template in TEXT_OPERATIONS.items()}
    out.update({op: [template.format(numbers) for numbers in lists] for op, template in LIST_OPERATIONS.items()})
    return out


@torch.inference_mode()
def saturation_depth(engine, states: list[torch.Tensor], positions: list[int]) -> np.ndarray:
    """Per position, the smallest number of layers d (1..L) after which the logit lens gives the
    final top-1 at d and at every later layer. `states` are the L + 1 recorded hidden states. The
    lens runs from the last layer down and stops at each position's first disagreement (the vocabulary
    projection at every layer is most of this measurement's cost)."""
    n_layers = len(states) - 1
    final = engine.head(states[n_layers][0, positions]).argmax(-1)
    depth = torch.ones(len(positions), dtype=torch.long, device=final.device)  # agrees all the way down: 1
    open_ = torch.ones(len(positions), dtype=torch.bool, device=final.device)
    for d in range(n_layers - 1, 0, -1):
        rows = torch.nonzero(open_).flatten()
        if not len(rows):
            break
        agrees = engine.head(states[d][0, [positions[i] for i in rows.tolist()]]).argmax(-1) == final[rows]
        closed = rows[~agrees]
        depth[closed] = d + 1
        open_[closed] = False
    return depth.cpu().numpy()


@torch.inference_mode()
def influence_order(states: list[torch.Tensor], positions: list[int]) -> torch.Tensor:
    """Per position, layers 1..L-1 ordered by the position's own block influence, least first
    (positions x L-1)."""
    influence = torch.stack([1 - torch.cosine_similarity(states[i][0, positions].float(),
                                                         states[i + 1][0, positions].float(), dim=-1)
                             for i in range(1, len(states) - 1)], dim=1)
    return influence.argsort(dim=1, stable=True) + 1


@torch.inference_mode()
def logits_with_skips(engine, flight, tokens: torch.Tensor, positions: list[int], skip: list[list[int]]) -> torch.Tensor:
    """Next-token logits of each row (rows x vocab): row r is token `tokens[r]` at position `positions[r]`,
    attending to the first `positions[r]` positions of the batch's cache (the full model's, one copy per
    row) and to itself, with the layers `skip[r]` skipped for that row alone while their keys and values
    are still written (the engine's fill: a complete cache). The cache is left as it was."""
    rows, filled = len(positions), flight.length
    position_ids = torch.tensor(positions, device=tokens.device)[:, None]
    allowed = torch.arange(filled + 1, device=tokens.device)[None, :] < position_ids
    allowed[:, filled] = True  # itself, appended after the cache
    mask = allowed[:, None, None, :]
    try:
        x, ctx = flight.feed(tokens[:, None], position_ids=position_ids, mask4d=mask)
        hidden = flight.run(x, ctx, plans=[SkipPlan.make(fill=layers) for layers in skip])
    finally:
        flight.truncate(filled)
    return engine.head(hidden[:, -1])


@torch.inference_mode()
def token_depths(engine, prompt_ids: list[int], continuation: list[int]) -> dict[str, np.ndarray]:
    """Per generated token of the full model's greedy `continuation` of `prompt_ids`: `saturation`
    and `skippable` (see the module docstring), and `needed` = L - skippable."""
    n_layers = engine.n_layers
    sequence = list(prompt_ids) + list(continuation[:-1])
    positions = list(range(len(prompt_ids) - 1, len(sequence)))
    ids = torch.tensor([sequence], device=engine.device)
    # one forward of the whole sequence gives every layer's states and, cut back by its last position,
    # the full model's cache the per-position skips attend to
    flight = engine.start(torch.ones_like(ids))
    record = Record(states=True)
    flight.step(ids, record=record, logits=False)
    flight.truncate(len(sequence) - 1)
    states = record.kept_states
    saturation = saturation_depth(engine, states, positions)
    order = influence_order(states, positions)
    truth = engine.head(states[-1][0, positions]).argmax(-1)  # the full model's own top-1 at each position
    flight.repeat_rows(len(positions))
    tokens = ids[0, positions]
    low = torch.zeros(len(positions), dtype=torch.long, device=engine.device)       # keeps the top-1
    high = torch.full_like(low, n_layers)                                            # changes it (L - 1 + 1)
    while bool((high - low > 1).any()):
        middle = (low + high) // 2
        skip = [order[r, :k].tolist() for r, k in enumerate(middle.tolist())]
        kept = logits_with_skips(engine, flight, tokens, positions, skip).argmax(-1) == truth
        low = torch.where(kept, middle, low)
        high = torch.where(kept, high, middle)
    skippable = low.cpu().numpy()
    return {"saturation": saturation, "skippable": skippable, "needed": n_layers - skippable}


@torch.inference_mode()
def greedy_continuations(engine, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 8) -> list[tuple]:
    """(prompt ids, the full model's greedy continuation up to and including its end-of-sequence
    token) per prompt, generated `batch_size` prompts of similar length at a time."""
    limit = context_length(engine.model) - max_new_tokens
    eos = tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    out = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = encode_prompts(tokenizer, [prompts[i] for i in idx], engine.device, limit)
        new = generate(engine, batch, max_new_tokens, eos_token_id=eos).tolist()
        for row, i in enumerate(idx):
            ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            tokens = new[row][:new[row].index(eos) + 1] if eos in new[row] else new[row]
            out[i] = (ids, tokens)
    return out


def depth_items(params: dict, corpus_rows: list[dict]) -> list[tuple[str, str, int, str]]:
    """(kind, group, index, prompt) of every depth prompt: FlexiDepth's six operations (paragraphs from
    `depth.paragraphs`, seeded lists) and held-out prompts of seen tasks per category."""
    from ais.params import get
    from ais.routing.corpus import fetch_bigbench, prompts_by_category, read_tasks

    archive = get(params, "corpus.archive")
    task = get(params, "depth.paragraphs")
    examples = read_tasks(fetch_bigbench() if archive == "auto" else Path(archive), {task})[task]
    paragraphs = [first_sentences(e["input"], get(params, "corpus.max_chars")) for e in examples]
    groups = {"operation": operation_prompts(paragraphs, get(params, "depth.n_per_operation"), get(params, "depth.seed")),
              "category": prompts_by_category(corpus_rows, "heldout", get(params, "depth.n_per_category"))}
    return [(kind, group, i, prompt) for kind, by_group in groups.items() for group, prompts in by_group.items()
            for i, prompt in enumerate(prompts)]


def summarise_depths(per_item: dict[str, list[dict]], n_layers: int, seed: int) -> dict:
    """Per group (an operation or a category): mean and 95% interval over items of each item's
    mean needed layers and saturation depth, also as fractions of the layer count."""
    out = {}
    for group, items in per_item.items():
        row = {"n_items": len(items), "n_tokens": int(sum(len(i["needed"]) for i in items))}
        for measure in ("needed", "saturation"):
            interval = mean_interval([float(np.mean(i[measure])) for i in items], seed)
            row.update({k: round(v, 3) for k, v in interval.as_dict(measure).items()})
            row[f"{measure}_fraction"] = round(interval.mean / n_layers, 4)
        if group in FLEXIDEPTH:
            row["flexidepth_fraction"] = round(FLEXIDEPTH[group] / FLEXIDEPTH_LAYERS, 4)
        out[group] = row
    return out


def orderings(summary: dict, measure: str = "needed") -> dict[str, dict]:
    """Whether FlexiDepth's orderings (copy < summarise < continue, repeat < sum < product) hold
    here for `measure`: by the means, and with every adjacent pair's intervals apart."""
    out = {}
    for chain in ORDERINGS:
        if not all(op in summary for op in chain):
            continue
        pairs = list(zip(chain, chain[1:]))
        out[" < ".join(chain)] = {
            "by_means": all(summary[a][measure] < summary[b][measure] for a, b in pairs),
            "intervals_apart": all(summary[a][f"{measure}_ci_high"] < summary[b][f"{measure}_ci_low"] for a, b in pairs),
        }
    return out
