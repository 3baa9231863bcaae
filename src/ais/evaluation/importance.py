"""Per-category layer importance: how much the output moves when layers are removed.

Measures, each n_categories x n_layers:
  single — KL(full || layer i hard-skipped), teacher-forced over a short continuation;
  group  — the original's method: KL with a contiguous group of layers skipped, broadcast to its layers;
  block_influence — ShortGPT's 1 - cos(input, output) of each layer (no ablation, one forward);
  greedy — a plan search (TALE / iterative ShortGPT): remove, one layer at a time, the layer whose
           removal (with those removed before) costs the least top-1 agreement; a layer's value is the
           agreement lost once it is removed, so the lowest values are the search's plan.
Layer 0 is never skipped (the KV cache depends on it), so it is not ablated: it is marked
critical (normalised importance 1) and its raw KL is recorded as NaN. Every measure is also taken
over all categories' prompts pooled: the global plan gets the same search at the same budget.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from ais.evaluation.quality import Reference, compare_logprobs, make_reference
from ais.evaluation.references import importance_chunks
from ais.methods.original import layer_groups
from ais.methods.search import greedy_removal
from ais.model.engine import Record
from ais.model.plan import SkipPlan

METHODS = ("single", "group", "block_influence", "greedy")


def _references(engine, tokenizer, prompts: list[str], n_continuation: int, chunk: int) -> list[Reference]:
    """The full model's teacher-forced references, `chunk` prompts of similar length per forward
    (less padding; the order of the prompts does not matter to any measure)."""
    return [make_reference(engine, tokenizer, part, n_continuation) for part in importance_chunks(prompts, chunk)]


def block_influence(engine, batch: dict) -> torch.Tensor:
    """Block Influence per prompt and layer (B x n_layers) from one full forward: a training-free prior
    (higher = the layer changes its input more)."""
    record = Record(influence=True)
    engine.forward(batch["input_ids"], batch["attention_mask"], record=record)
    return record.influence_matrix(batch["input_ids"].shape[0], engine.n_layers, "cpu")


def per_prompt_ablations(engine, refs: list[Reference], n_groups: int) -> dict[str, np.ndarray]:
    """Per-prompt single-layer KL, group KL and block influence (prompts x layers or groups): one
    recorded forward of the full model gives every layer's input and the block influence, and every
    ablation starts from the state entering the layers it removes."""
    n_layers = engine.n_layers
    groups = [[i for i in members if i != 0] for members in layer_groups(n_layers, n_groups)]
    single, group_kl, influence = [], [], []
    for ref in refs:
        rows = len(ref)
        record = Record(states=True, influence=True)
        engine.forward(ref.batch["input_ids"], ref.batch["attention_mask"], record=record)
        layers = list(range(1, n_layers))
        scores = from_states(engine, ref, record.kept_states,
                             [(j, [j]) for j in layers] + [(g[0], g) for g in groups if g])
        s = np.full((rows, n_layers), np.nan)
        for j in layers:
            s[:, j] = scores[(j, (j,))]["kl"]
        g = np.full((rows, n_groups), np.nan)
        for k, members in enumerate(groups):
            if members:
                g[:, k] = scores[(members[0], tuple(members))]["kl"]
        single.append(s)
        group_kl.append(g)
        influence.append(record.influence_matrix(rows, n_layers, "cpu").numpy())
    group_kl = np.concatenate(group_kl)
    group = np.zeros((len(group_kl), n_layers))
    for k, members in enumerate(layer_groups(n_layers, n_groups)):
        group[:, members] = group_kl[:, [k]]
    return {"single": np.concatenate(single), "group": group, "group_kl": group_kl,
            "block_influence": np.concatenate(influence)}


@torch.inference_mode()
def from_states(engine, ref: Reference, states: list[torch.Tensor], ablations: list[tuple[int, list[int]]],
                head_rows: int = 32) -> dict[tuple, dict[str, np.ndarray]]:
    """Per-prompt KL(full || ablated) and top-1 agreement of each ablation (start, removed): the rows
    of every ablation run in one batch, each entering at layer `start` with `states[start]` (the state
    entering that layer under what ran before) and skipping `removed`; the layers below `start` are
    already in that state, so for that row they are skipped too, and cost nothing."""
    batch, n = ref.batch, len(ref)
    hidden = torch.cat([states[start] for start, _ in ablations])
    plans = [SkipPlan.make(hard=set(range(1, start)) | set(removed)) for start, removed in ablations for _ in range(n)]
    mask = batch["attention_mask"].repeat(len(ablations), 1)
    first = min(start for start, _ in ablations)
    final = engine.forward(batch["input_ids"].repeat(len(ablations), 1), mask, plans, start=first, hidden=hidden)
    final = final[:, ref.columns]
    out, kl, top1 = {}, [], []
    for lo in range(0, len(final), head_rows):
        members = torch.arange(lo, min(len(final), lo + head_rows)) % n
        logprobs = torch.log_softmax(engine.head(final[lo:lo + head_rows]).float(), -1)
        scores = compare_logprobs(ref.full_logprobs, logprobs, ref.scored[members], terms=ref.full_terms(),
                                  members=members)
        kl.append(scores["kl"])
        top1.append(scores["top1"])
    kl, top1 = torch.cat(kl).cpu().numpy(), torch.cat(top1).cpu().numpy()
    for a, (start, removed) in enumerate(ablations):
        out[(start, tuple(removed))] = {"kl": kl[a * n:(a + 1) * n], "top1": top1[a * n:(a + 1) * n]}
    return out


@torch.inference_mode()
def ablate(engine, ref: Reference, removed: list[int], candidates: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """Per-prompt KL(full || skipped) and top-1 agreement with `removed` plus each candidate layer
    hard-skipped. The layers below a candidate compute what they compute under `removed` alone, so
    they run once (a recorded forward under `removed`), and each candidate starts from the state
    entering it (half the cost of scoring each plan whole, the same values up to float rounding)."""
    batch, rows = ref.batch, len(ref)
    record = Record(states=True)
    engine.forward(batch["input_ids"], batch["attention_mask"], [SkipPlan.make(hard=removed)] * rows,
                   stop=max(candidates) + 1, record=record)
    found = from_states(engine, ref, record.kept_states, [(j, sorted(set(removed) | {j})) for j in candidates])
    return {j: found[(j, tuple(sorted(set(removed) | {j})))] for j in candidates}


def greedy_search(engine, refs: list[Reference], candidates: list[int], steps: int, bar=None) -> np.ndarray:
    """The greedy layer search (`ais.methods.search`) on these references, for `steps` steps. Returns
    raw importance per layer: 1 - the top-1 agreement once the layer is removed (cumulative along the
    removal order, so never below an earlier removed layer's value); layers the search did not remove
    get the agreement lost by removing them after the searched plan (at least the last removed
    value); NaN for layers that are not candidates."""

    def score_sets(sets):  # every set is the removed layers so far plus one candidate: one shared-prefix ablation
        removed, tried = sets[0][:-1], [s[-1] for s in sets]
        per_ref = [ablate(engine, ref, removed, tried) for ref in refs]
        if bar is not None:
            bar.update(len(refs))
        return [{m: float(np.concatenate([r[j][m] for r in per_ref]).mean()) for m in ("top1", "kl")} for j in tried]

    found = greedy_removal(score_sets, candidates, steps)
    values, loss = {}, {}
    for step in found:
        values[step["layer"]] = max(1.0 - step["top1"], max(values.values(), default=0.0))
        loss = step["losses"]
    floor = max(values.values(), default=0.0)
    for j in candidates:
        if j not in values:
            values[j] = max(loss.get(j, floor), floor)
    raw = np.full(engine.n_layers, np.nan)
    for j, v in values.items():
        raw[j] = v
    return raw


def split_half_stability(per_prompt: np.ndarray, layers: list[int] | None = None) -> float:
    """Spearman rank correlation between the importance from even- and odd-numbered prompts, over
    `layers` (default: every measured layer): how stable a plan drawn from this calibration set is.
    Over the layers a plan may skip it is the stricter number: the layers below the pivot, far more
    important than the rest, make the ranking over all layers look stable."""
    a, b = _nanmean_keep(per_prompt[0::2]), _nanmean_keep(per_prompt[1::2])
    measured = np.isfinite(a) & np.isfinite(b)
    if layers is not None:
        measured &= np.isin(np.arange(len(a)), layers)
    return float(stats.spearmanr(a[measured], b[measured]).statistic)


def _halves(refs: list[Reference]) -> list[list[Reference]]:
    """The calibration references split into even- and odd-numbered prompts."""
    return [[r.rows(list(range(h, len(r.scored), 2))) for r in refs if len(r.scored) > h] for h in (0, 1)]


def measure(engine, tokenizer, prompts_by_category: dict[str, list[str]], n_continuation: int, n_groups: int,
            method: str, pivot: int, greedy_steps: int, chunk: int = 16, progress: bool = True,
            references=None) -> dict:
    """Raw importance {method: categories x layers} for the ablation measures (and the greedy search
    when `method` is greedy: it costs about one single-layer sweep per step, three times over for
    its split-half stability), the same measures over all prompts pooled ({`global_<method>`: layers}),
    and each category's split-half stability per measure, over the layers past the pivot (those a
    plan may skip) and over all measured layers."""
    categories = sorted(prompts_by_category)
    n_layers = engine.n_layers
    if references is not None:  # the reference stage's, in the same batches
        refs = {c: [references.get(f"importance/{c}/{k}", part, "forced")
                    for k, part in enumerate(importance_chunks(prompts_by_category[c], chunk))] for c in categories}
    else:
        refs = {c: _references(engine, tokenizer, prompts_by_category[c], n_continuation, chunk) for c in categories}
    all_refs = [r for c in categories for r in refs[c]]
    candidates = list(range(max(1, pivot), n_layers))
    searched = min(greedy_steps, len(candidates)) if method == "greedy" else 0
    total = len(all_refs) * (1 + 4 * searched)  # ablation sweeps, then search steps (category, halves, pooled)
    out: dict = {m: np.full((len(categories), n_layers), np.nan) for m in METHODS}
    out["group_kl"] = np.zeros((len(categories), n_groups))
    pooled: dict[str, list] = {}
    stability: dict[str, dict] = {m: {} for m in METHODS if m != "greedy" or searched}
    stability_all: dict[str, dict] = {m: {} for m in stability}
    with tqdm(total=total, desc="importance", unit="sweep", disable=not progress, mininterval=2.0) as bar:
        for k, c in enumerate(categories):
            for m, values in per_prompt_ablations(engine, refs[c], n_groups).items():
                out[m][k] = _nanmean_keep(values)
                pooled.setdefault(m, []).append(values)
                if m in stability:
                    stability[m][c] = split_half_stability(values, candidates)
                    stability_all[m][c] = split_half_stability(values)
            bar.update(len(refs[c]))
            if searched:
                out["greedy"][k] = greedy_search(engine, refs[c], candidates, searched, bar)
                halves = [greedy_search(engine, half, candidates, searched, bar) for half in _halves(refs[c])]
                stability["greedy"][c] = stability_all["greedy"][c] = split_half_stability(np.stack(halves))
        for m, values in pooled.items():
            out[f"global_{m}"] = _nanmean_keep(np.concatenate(values))
        out["global_greedy"] = greedy_search(engine, all_refs, candidates, searched, bar) if searched \
            else np.full(n_layers, np.nan)
    out["categories"] = np.array(categories)
    out["groups"] = np.array([g[0] for g in layer_groups(n_layers, n_groups)])
    out["stability"] = stability
    out["stability_all_layers"] = stability_all
    return out


def _nanmean_keep(values: np.ndarray) -> np.ndarray:
    """Column means that stay NaN where a column was never measured (layer 0), without a warning."""
    measured = np.isfinite(values).any(0)
    out = np.full(values.shape[1], np.nan)
    out[measured] = np.nanmean(values[:, measured], 0)
    return out
