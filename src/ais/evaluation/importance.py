"""Per-category layer importance: how much the output moves when layers are removed.

Three measures, each n_categories x n_layers:
  single — KL(full || layer i hard-skipped), teacher-forced over a short continuation;
  group  — the original's method: KL with a contiguous group of layers skipped, broadcast to its layers;
  block_influence — ShortGPT's 1 - cos(input, output) of each layer (no ablation, one forward).
Layer 0 is never skipped (the KV cache depends on it), so it is not ablated: it is marked
critical (normalised importance 1) and its raw KL is recorded as NaN.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ais.evaluation.quality import block_influence, compare, make_reference
from ais.model.gating import SkipPlan

METHODS = ("single", "group", "block_influence")


def layer_groups(n_layers: int, n_groups: int) -> list[list[int]]:
    """`n_groups` contiguous groups covering all layers, sizes differing by at most one."""
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or not 1 <= n_groups <= n_layers:
        raise ValueError(f"importance.n_groups={n_groups!r} must be an integer in 1..{n_layers}")
    bounds = np.linspace(0, n_layers, n_groups + 1).round().astype(int)
    return [list(range(bounds[g], bounds[g + 1])) for g in range(n_groups)]


def measure(model, tokenizer, prompts_by_category: dict[str, list[str]], n_continuation: int,
            n_groups: int, progress: bool = True) -> dict[str, np.ndarray]:
    """Raw importance arrays {single, group, group_kl, block_influence} (categories sorted)."""
    n_layers = model.config.num_hidden_layers
    groups = layer_groups(n_layers, n_groups)
    categories = sorted(prompts_by_category)
    single = np.full((len(categories), n_layers), np.nan)
    group_kl = np.zeros((len(categories), n_groups))
    influence = np.zeros((len(categories), n_layers))
    total = len(categories) * (n_layers - 1 + n_groups)
    with tqdm(total=total, desc="importance (ablations)", unit="forward", disable=not progress, mininterval=2.0) as bar:
        for c, category in enumerate(categories):
            ref = make_reference(model, tokenizer, prompts_by_category[category], n_continuation)
            for layer in range(1, n_layers):
                single[c, layer] = compare(model, ref, SkipPlan.make(hard=[layer]))["kl"].mean().item()
                bar.update()
            for g, members in enumerate(groups):
                skippable = [i for i in members if i != 0]
                group_kl[c, g] = compare(model, ref, SkipPlan.make(hard=skippable))["kl"].mean().item() if skippable else np.nan
                bar.update()
            influence[c] = block_influence(model, ref.batch).cpu().numpy()
    group = np.zeros_like(single)
    for g, members in enumerate(groups):
        group[:, members] = group_kl[:, [g]]
    return {"single": single, "group": group, "group_kl": group_kl, "block_influence": influence,
            "categories": np.array(categories), "groups": np.array([g[0] for g in groups])}


def minmax_per_category(raw: np.ndarray, protected=(0,)) -> np.ndarray:
    """Min-max per category over the measured layers, to [0, 1]; protected layers are set to 1."""
    out = np.zeros_like(raw, dtype=np.float64)
    for c in range(raw.shape[0]):
        row = raw[c].astype(np.float64).copy()
        measured = [i for i in range(len(row)) if i not in protected and np.isfinite(row[i])]
        lo, hi = row[measured].min(), row[measured].max()
        out[c, measured] = (row[measured] - lo) / (hi - lo) if hi > lo else 0.0
        out[c, list(protected)] = 1.0
    return out
