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

from ais.evaluation.quality import Reference, compare, make_reference
from ais.model.forward import block_influence, layer_context, run_layers
from ais.model.gating import SkipPlan, skipping

METHODS = ("single", "group", "block_influence", "greedy")


def layer_groups(n_layers: int, n_groups: int) -> list[list[int]]:
    """`n_groups` contiguous groups covering all layers, sizes differing by at most one."""
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or not 1 <= n_groups <= n_layers:
        raise ValueError(f"importance.n_groups={n_groups!r} must be an integer in 1..{n_layers}")
    bounds = np.linspace(0, n_layers, n_groups + 1).round().astype(int)
    return [list(range(bounds[g], bounds[g + 1])) for g in range(n_groups)]


def references(model, tokenizer, prompts: list[str], n_continuation: int, chunk: int) -> list[Reference]:
    """The full model's teacher-forced references, `chunk` prompts of similar length per forward
    (less padding; the order of the prompts does not matter to any measure)."""
    prompts = sorted(prompts, key=len)
    return [make_reference(model, tokenizer, prompts[i:i + chunk], n_continuation) for i in range(0, len(prompts), chunk)]


def per_prompt_ablations(model, refs: list[Reference], n_groups: int) -> dict[str, np.ndarray]:
    """Per-prompt single-layer KL, group KL and block influence (prompts x layers or groups)."""
    n_layers = model.config.num_hidden_layers
    groups = layer_groups(n_layers, n_groups)
    single, group_kl, influence = [], [], []
    for ref in refs:
        rows = ref.batch["input_ids"].shape[0]
        s = np.full((rows, n_layers), np.nan)
        for layer, scores in ablate(model, ref, [], list(range(1, n_layers))).items():
            s[:, layer] = scores["kl"]
        g = np.full((rows, n_groups), np.nan)
        for k, members in enumerate(groups):
            skippable = [i for i in members if i != 0]
            if skippable:
                g[:, k] = compare(model, ref, SkipPlan.make(hard=skippable))["kl"].cpu().numpy()
        single.append(s)
        group_kl.append(g)
        influence.append(block_influence(model, ref.batch).cpu().numpy())
    group_kl = np.concatenate(group_kl)
    group = np.zeros((len(group_kl), n_layers))
    for k, members in enumerate(groups):
        group[:, members] = group_kl[:, [k]]
    return {"single": np.concatenate(single), "group": group, "group_kl": group_kl,
            "block_influence": np.concatenate(influence)}


@torch.inference_mode()
def ablate(model, ref: Reference, removed: list[int], candidates: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """Per-prompt KL(full || skipped) and top-1 agreement with `removed` plus each candidate layer
    hard-skipped. The layers below a candidate compute what they compute under `removed` alone, so
    they run once and each candidate's forward starts at the candidate (half the cost of `compare`
    per layer, the same values up to float rounding)."""
    n_layers = model.config.num_hidden_layers
    embeds, ctx = layer_context(model, ref.batch)
    inputs, hidden = {}, embeds
    with skipping(model, SkipPlan.make(hard=removed)):
        for i in range(max(candidates) + 1):
            if i in candidates:
                inputs[i] = hidden
            hidden = run_layers(model, hidden, ctx, i, i + 1)
    full = ref.full_logprobs
    weights = ref.scored / ref.scored.sum(1, keepdim=True)
    out = {}
    for j in candidates:
        with skipping(model, SkipPlan.make(hard=removed + [j])):
            final = run_layers(model, inputs[j], ctx, j + 1, n_layers)
        logprobs = torch.log_softmax(model.lm_head(model.model.norm(final[:, ref.columns])).float(), -1)
        kl = (full.exp() * (full - logprobs)).sum(-1).clamp_min(0)
        top1 = (logprobs.argmax(-1) == full.argmax(-1)).float()
        out[j] = {"kl": (kl * weights).sum(1).cpu().numpy(), "top1": (top1 * weights).sum(1).cpu().numpy()}
    return out


def greedy_search(model, refs: list[Reference], candidates: list[int], steps: int, bar=None) -> np.ndarray:
    """Greedy layer removal over `candidates` for `steps` steps (ties: the lower layer). Returns raw
    importance per layer: 1 - the top-1 agreement once the layer is removed (cumulative along the
    removal order, so never below an earlier removed layer's value); layers the search did not
    remove get the agreement lost by removing them after the searched plan (at least the last
    removed value); NaN for layers that are not candidates."""
    removed, values, loss = [], {}, {}
    remaining = list(candidates)
    for _ in range(min(steps, len(candidates))):
        scores = {j: [] for j in remaining}
        for ref in refs:
            for j, result in ablate(model, ref, removed, remaining).items():
                scores[j].append(result["top1"])
            if bar is not None:
                bar.update()
        loss = {j: 1.0 - float(np.concatenate(scores[j]).mean()) for j in remaining}
        best = min(remaining, key=lambda j: (loss[j], j))
        values[best] = max(loss[best], max(values.values(), default=0.0))
        removed.append(best)
        remaining.remove(best)
    floor = max(values.values(), default=0.0)
    for j in remaining:
        values[j] = max(loss.get(j, floor), floor)
    raw = np.full(model.config.num_hidden_layers, np.nan)
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


def measure(model, tokenizer, prompts_by_category: dict[str, list[str]], n_continuation: int, n_groups: int,
            method: str, pivot: int, greedy_steps: int, chunk: int = 16, progress: bool = True) -> dict:
    """Raw importance {method: categories x layers} for the ablation measures (and the greedy search
    when `method` is greedy: it costs about one single-layer sweep per step, three times over for
    its split-half stability), the same measures over all prompts pooled ({`global_<method>`: layers}),
    and each category's split-half stability per measure, over the layers past the pivot (those a
    plan may skip) and over all measured layers."""
    categories = sorted(prompts_by_category)
    n_layers = model.config.num_hidden_layers
    refs = {c: references(model, tokenizer, prompts_by_category[c], n_continuation, chunk) for c in categories}
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
            for m, values in per_prompt_ablations(model, refs[c], n_groups).items():
                out[m][k] = _nanmean_keep(values)
                pooled.setdefault(m, []).append(values)
                if m in stability:
                    stability[m][c] = split_half_stability(values, candidates)
                    stability_all[m][c] = split_half_stability(values)
            bar.update(len(refs[c]))
            if searched:
                out["greedy"][k] = greedy_search(model, refs[c], candidates, searched, bar)
                halves = [greedy_search(model, half, candidates, searched, bar) for half in _halves(refs[c])]
                stability["greedy"][c] = stability_all["greedy"][c] = split_half_stability(np.stack(halves))
        for m, values in pooled.items():
            out[f"global_{m}"] = _nanmean_keep(np.concatenate(values))
        out["global_greedy"] = greedy_search(model, all_refs, candidates, searched, bar) if searched \
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
