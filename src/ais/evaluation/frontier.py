"""The quality-vs-speed frontier: for each skipped fraction, top-1 agreement and KL against the
full model for three ways of choosing the layers (routed per category, one global plan, random),
all in `skip.mode`, next to the prefill speedup measured for that many skipped layers."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from ais.decoding.greedy import next_token_logits
from ais.evaluation.importance import layer_groups
from ais.evaluation.quality import make_reference
from ais.evaluation.timing import time_interleaved
from ais.evaluation.validation import global_layers, score_plans
from ais.model.gating import SkipPlan
from ais.model.prompts import context_length, encode_prompts
from ais.routing.plans import make_plan, n_layers_to_skip, random_layers


def measured_speedup(model, tokenizer, prompts: list[str], plan: SkipPlan, warmup: int, repeats: int) -> float:
    """Median prefill time of the full model over that of the model under `plan`."""
    batch = encode_prompts(tokenizer, prompts, model.device, context_length(model))
    times = time_interleaved({"full": lambda: next_token_logits(model, batch),
                              "skipped": lambda: next_token_logits(model, batch, plan)},
                             model.device, warmup, repeats)
    return float(np.median(times["full"]) / np.median(times["skipped"]))


def original_plans(n_layers: int, group_kl: np.ndarray, categories: list[str]) -> dict[str, dict[str, list[int]]]:
    """The original prototype's two plans, on this model: a fixed half (2nd and 4th of 4 groups)
    and, per category, the one group of 4 with the lowest group-ablation KL (a quarter)."""
    groups = layer_groups(n_layers, 4)
    fixed = sorted(groups[1] + groups[3])
    quarter = {c: [i for i in groups[int(np.nanargmin(group_kl[k][1:])) + 1] if i != 0] for k, c in enumerate(categories)}
    return {"original_fixed_half": {c: fixed for c in categories}, "original_group_quarter": quarter}


def frontier(decoder, tokenizer, prompts_by_category: dict[str, list[str]], fractions: list[float],
             n_continuation: int, seed: int, timing_prompts: list[str], warmup: int, repeats: int,
             extra_plans: dict[str, dict[str, list[int]]] | None = None, progress: bool = True) -> list[dict]:
    """Rows {method, fraction, n_skipped, top1, top5, kl, speedup} pooled over categories."""
    model, mode, alpha = decoder.model, decoder.settings.mode, decoder.settings.alpha
    n_layers = model.config.num_hidden_layers
    rng = np.random.default_rng(seed)
    counts = sorted({n_layers_to_skip(f, n_layers) for f in fractions})
    speed = {n: 1.0 if n == 0 else measured_speedup(model, tokenizer, timing_prompts,
                                                     make_plan(global_layers(decoder, n), mode, alpha), warmup, repeats)
             for n in counts}
    pooled: dict[tuple, dict[str, list]] = {}
    for category in tqdm(sorted(prompts_by_category), desc="frontier", unit="category", disable=not progress):
        prompts = prompts_by_category[category]
        routes = decoder.route_prompts(tokenizer, prompts)
        ref = make_reference(model, tokenizer, prompts, n_continuation)
        conditions = {}
        for n in counts:
            f = n / n_layers
            conditions[("routed", n)] = [decoder.plan_for(r.category, f) for r in routes]
            conditions[("global", n)] = [make_plan(global_layers(decoder, n), mode, alpha)] * len(prompts)
            conditions[("random", n)] = [make_plan(random_layers(n_layers, decoder.pivot, n, rng), mode, alpha)
                                         for _ in prompts]
        for name, per_category in (extra_plans or {}).items():
            layers = per_category[category]
            conditions[(name, len(layers))] = [make_plan(layers, mode, alpha)] * len(prompts)
        scores = score_plans(model, ref, conditions)
        for key, metric in scores.items():
            for m, values in metric.items():
                pooled.setdefault(key, {}).setdefault(m, []).extend(values.tolist())
    for name, per_category in (extra_plans or {}).items():
        n = len(next(iter(per_category.values())))
        if n not in speed:
            speed[n] = measured_speedup(model, tokenizer, timing_prompts,
                                        make_plan(next(iter(per_category.values())), mode, alpha), warmup, repeats)
    rows = []
    for (method, n), metric in sorted(pooled.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        rows.append({"method": method, "mode": mode, "n_skipped": n, "fraction": round(n / n_layers, 4),
                     "top1": round(float(np.mean(metric["top1"])), 4), "top5": round(float(np.mean(metric["top5"])), 4),
                     "kl": round(float(np.mean(metric["kl"])), 4), "speedup": round(speed[n], 4),
                     "ideal_speedup": round(n_layers / (n_layers - n), 4) if mode == "hard" else 1.0})
    return rows
