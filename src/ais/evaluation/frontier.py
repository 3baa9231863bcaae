"""The quality-vs-speed frontier: for each number of skipped layers, quality against the full model
(top-1 agreement, KL; per prompt, on both held-out splits) and the prefill speedup measured for that
very plan, for every way of choosing the layers, all in `skip.mode`:
  routed — each prompt's routed category's plan; timed with the router and the map lookup inside
           the clock, on batches that mix categories, rows continuing as one sub-batch per plan;
  oracle — the prompt's true category's plan (no router; the same sub-batches);
  global — one plan for all prompts; random — the same number of layers drawn at random;
plus the original prototype's plans (a fixed half of the groups; per category its best group)."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from ais.decoding.greedy import next_token_logits
from ais.decoding.routed import RoutedDecoder
from ais.evaluation.importance import layer_groups
from ais.evaluation.quality import make_reference
from ais.evaluation.statistics import mean_interval, paired_difference
from ais.evaluation.timing import speedup, summary, time_interleaved
from ais.evaluation.validation import global_layers, score_plans
from ais.model.gating import SkipPlan, group_by_plan
from ais.model.prompts import context_length, encode_prompts
from ais.routing.plans import make_plan, random_layers

ROUTED = "routed"


def original_plans(n_layers: int, group_kl: np.ndarray, categories: list[str]) -> dict[str, dict[str, list[int]]]:
    """The original prototype's two plans on this model, for any number of groups (it used 4):
    a fixed half (every second group: the 2nd and 4th of 4) and, per category, the one group with
    the lowest group-ablation KL (never the group holding layer 0)."""
    n_groups = group_kl.shape[1]
    groups = layer_groups(n_layers, n_groups)
    if n_groups < 2:
        raise ValueError(f"the original plans need at least 2 layer groups, importance.n_groups is {n_groups}")
    fixed = sorted(i for g in range(1, n_groups, 2) for i in groups[g])
    best = {c: [i for i in groups[int(np.nanargmin(group_kl[k][1:])) + 1] if i != 0] for k, c in enumerate(categories)}
    return {"original_fixed_half": {c: fixed for c in categories}, "original_best_group": best}


def run_plans(model, batch: dict, plans: list[SkipPlan]) -> None:
    """One prefill forward of a batch whose rows have their own plans: one sub-batch per plan."""
    for plan, rows in group_by_plan(plans).items():
        sub = batch if len(rows) == batch["input_ids"].shape[0] else {k: v[rows] for k, v in batch.items()}
        next_token_logits(model, sub, plan)


def plans_for_count(decoder: RoutedDecoder, truth: list[str], routed: list[str], n: int,
                    rng: np.random.Generator) -> dict[tuple[str, int], list[SkipPlan]]:
    """Every method's plan per prompt at `n` skipped layers."""
    settings, n_layers = decoder.settings, decoder.model.config.num_hidden_layers
    mode, alpha, fraction = settings.mode, settings.alpha, n / n_layers
    return {
        (ROUTED, n): [decoder.plan_for(c, fraction) for c in routed],
        ("oracle", n): [decoder.plan_for(c, fraction) for c in truth],
        ("global", n): [make_plan(global_layers(decoder, n), mode, alpha)] * len(truth),
        ("random", n): [make_plan(random_layers(n_layers, decoder.pivot, n, rng), mode, alpha) for _ in truth],
    }


def extra_plans_for(decoder: RoutedDecoder, routed: list[str],
                    extra: dict[str, dict[str, list[int]]]) -> dict[tuple[str, int], list[SkipPlan]]:
    """The extra (original) plans per prompt, chosen by the routed category as the prototype did;
    keyed by their mean layer count."""
    mode, alpha = decoder.settings.mode, decoder.settings.alpha
    out = {}
    for name, per_category in extra.items():
        n = int(round(np.mean([len(per_category[c]) for c in routed])))
        out[(name, n)] = [make_plan(per_category[c], mode, alpha) for c in routed]
    return out


def measure_quality(decoder: RoutedDecoder, tokenizer, prompts_by_split: dict[str, dict[str, list[str]]],
                    counts: list[int], n_continuation: int, seed: int, extra: dict[str, dict[str, list[int]]],
                    progress: bool = True) -> list[dict]:
    """Per-prompt rows {split, category, prompt, method, n_skipped, top1, top5, kl}."""
    model = decoder.model
    rng = np.random.default_rng(seed)
    rows = []
    for split, by_category in prompts_by_split.items():
        for category in tqdm(sorted(by_category), desc=f"frontier {split}", unit="category", disable=not progress):
            prompts = by_category[category]
            routed = [r.category for r in decoder.route_prompts(tokenizer, prompts, mode="full")]
            ref = make_reference(model, tokenizer, prompts, n_continuation)
            conditions = extra_plans_for(decoder, routed, extra)
            for n in counts:
                conditions.update(plans_for_count(decoder, [category] * len(prompts), routed, n, rng))
            for (method, n), metric in score_plans(model, ref, conditions).items():
                for i in range(len(prompts)):
                    rows.append({"split": split, "category": category, "prompt": i, "method": method, "n_skipped": n,
                                 **{k: round(float(v[i]), 6) for k, v in metric.items()}})
    return rows


def measure_speed(decoder: RoutedDecoder, tokenizer, prompts: list[str], truth: list[str], counts: list[int],
                  extra: dict[str, dict[str, list[int]]], warmup: int, repeats: int, seed: int) -> dict[tuple, dict]:
    """{(method, n): median time, IQR and paired speedup over the full model} for a mixed batch,
    every plan timed as used, all calls interleaved in one seeded random order per repeat."""
    model, n_layers = decoder.model, decoder.model.config.num_hidden_layers
    batch = encode_prompts(tokenizer, prompts, model.device, context_length(model))
    routed = [r.category for r in decoder.route_prompts(tokenizer, prompts, mode="full")]
    rng = np.random.default_rng(seed)
    calls = {("full", 0): lambda: next_token_logits(model, batch)}
    for n in counts:
        if n == 0:
            continue
        fraction_decoder = decoder.with_fraction(n / n_layers)
        calls[(ROUTED, n)] = lambda d=fraction_decoder: d.next_token_logits(batch)
        for key, plans in plans_for_count(decoder, truth, routed, n, rng).items():
            if key[0] != ROUTED:
                calls[key] = lambda p=plans: run_plans(model, batch, p)
    for key, plans in extra_plans_for(decoder, routed, extra).items():
        calls[key] = lambda p=plans: run_plans(model, batch, p)
    names = {f"{m}@{n}": (m, n) for m, n in calls}
    times = time_interleaved({name: calls[key] for name, key in names.items()}, model.device, warmup, repeats, seed)
    full = times["full@0"]
    return {key: {**summary(times[name]), **speedup(full, times[name])} for name, key in names.items()}


def summarise(rows: list[dict], speed: dict[tuple, dict], mode: str, n_layers: int, seed: int) -> list[dict]:
    """One row per split, method and count: quality means with intervals, routed minus global
    (paired), and the measured speed of that plan."""
    out = []
    keys = sorted({(r["split"], r["method"], r["n_skipped"]) for r in rows}, key=lambda k: (k[0], k[1], k[2]))
    by_key = {k: [r for r in rows if (r["split"], r["method"], r["n_skipped"]) == k] for k in keys}
    for split, method, n in keys:
        members = by_key[(split, method, n)]
        top1 = mean_interval([r["top1"] for r in members], seed)
        timed = speed.get((method, n)) or (speed[("full", 0)] if n == 0 else None)
        row = {"split": split, "method": method, "mode": mode, "n_skipped": n, "fraction": round(n / n_layers, 4),
               "n_prompts": len(members), "top1": round(top1.mean, 4), "top1_ci_low": round(top1.low, 4),
               "top1_ci_high": round(top1.high, 4), "top5": round(float(np.mean([r["top5"] for r in members])), 4),
               "kl": round(float(np.mean([r["kl"] for r in members])), 4)}
        if method == ROUTED and (split, "global", n) in by_key:
            diff = paired_difference([r["top1"] for r in members], [r["top1"] for r in by_key[(split, "global", n)]], seed)
            row.update({k: round(v, 4) for k, v in diff.as_dict("routed_minus_global_top1").items()})
        if timed is not None:
            row.update({"speedup": round(timed["speedup"], 4), "speedup_q1": round(timed["speedup_q1"], 4),
                        "speedup_q3": round(timed["speedup_q3"], 4), "median_s": round(timed["median_s"], 5),
                        "iqr_s": round(timed["iqr_s"], 5)})
        row["ideal_speedup"] = round(n_layers / (n_layers - n), 4) if mode == "hard" else 1.0
        out.append(row)
    return out
