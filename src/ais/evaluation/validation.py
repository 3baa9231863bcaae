"""Does routed skipping preserve the output? Held-out prompts of seen tasks (`heldout`) and of tasks
the map never saw (`heldout_task`), per category, under several plans, all in `skip.mode`:
  routed  — the routed category's plan (what the decoder runs);
  oracle  — the prompt's true category's plan: separates "the router picked the wrong category"
            from "the category's plan is no better";
  global  — one plan for every prompt (the pooled importance of all categories), same layer count;
  random  — the same number of layers drawn at random from the range a plan may use;
plus the routed layers in the other mode (hard vs soft). Every prompt's scores are kept, so any two
conditions are compared pairwise, with a bootstrap interval over prompts."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from ais.decoding.routed import RoutedDecoder
from ais.evaluation.quality import compare, make_reference
from ais.evaluation.statistics import mean_interval, paired_difference
from ais.model.gating import group_by_plan
from ais.routing.plans import OTHER_MODE, make_plan, random_layers

PASS_TOP1 = 0.95  # the original's criterion for a category to pass
METRICS = ("kl", "top1", "top5")
COMPARED = ("top1", "kl")  # the metrics every comparison is reported for, headline first


def score_plans(model, ref, plans_per_row: dict[str, list]) -> dict[str, dict[str, np.ndarray]]:
    """For each condition, per-row KL / top-1 / top-5 under that row's plan; rows sharing a
    plan are scored in one forward."""
    out = {}
    for name, plans in plans_per_row.items():
        rows = {key: np.zeros(len(plans)) for key in METRICS}
        for plan, members in group_by_plan(plans).items():
            sub = ref if len(members) == len(plans) else ref.rows(members)
            scores = compare(model, sub, plan)
            for key in rows:
                rows[key][members] = scores[key].cpu().numpy()
        out[name] = rows
    return out


def conditions(decoder: RoutedDecoder, category: str, routes, rng: np.random.Generator) -> dict[str, list]:
    """The plan of every prompt of one true category under each condition."""
    settings, n_layers = decoder.settings, decoder.model.config.num_hidden_layers
    mode, other = settings.mode, OTHER_MODE[settings.mode]
    routed_layers = [r.plan.layers for r in routes]
    oracle = decoder.plan_for(category, mode=mode)
    return {
        "routed": [r.plan for r in routes],
        "oracle": [oracle] * len(routes),
        "global": [make_plan(decoder.global_layers(len(ls)), mode, settings.alpha) for ls in routed_layers],
        "global_any_layer": [make_plan(decoder.global_layers(len(ls), below_pivot=True), mode, settings.alpha)
                             for ls in routed_layers],
        "random": [make_plan(random_layers(n_layers, decoder.pivot, len(ls), rng), mode, settings.alpha)
                   for ls in routed_layers],
        f"routed_{other}": [make_plan(ls, other, settings.alpha) for ls in routed_layers],
    }


def score_split(decoder: RoutedDecoder, tokenizer, prompts_by_category: dict[str, list[str]], n_continuation: int,
                rng: np.random.Generator, split: str, progress: bool = True) -> list[dict]:
    """One row per prompt: where it was routed, how many positions were scored, and every
    condition's KL / top-1 / top-5."""
    model = decoder.model
    rows = []
    for category in tqdm(sorted(prompts_by_category), desc=f"validate {split}", unit="category", disable=not progress):
        prompts = prompts_by_category[category]
        routes = decoder.route_prompts(tokenizer, prompts)
        ref = make_reference(model, tokenizer, prompts, n_continuation)
        scores = score_plans(model, ref, conditions(decoder, category, routes, rng))
        n_scored = ref.scored.sum(1).long().tolist()
        for i, route in enumerate(routes):
            row = {"split": split, "category": category, "prompt": i, "routed_category": route.category,
                   "routed_correctly": int(route.category == category), "skipped_layers": len(route.plan.layers),
                   "n_scored": n_scored[i]}
            for name, metric in scores.items():
                row.update({f"{name}_{key}": round(float(metric[key][i]), 6) for key in METRICS})
            rows.append(row)
    return rows


def comparisons(rows: list[dict], mode: str, seed: int) -> dict[str, dict]:
    """Paired differences over prompts (95% bootstrap intervals) for every comparison the report makes."""
    other = OTHER_MODE[mode]
    pairs = {"routed_minus_global": ("routed", "global"), "routed_minus_random": ("routed", "random"),
             "routed_minus_oracle": ("routed", "oracle"), "global_any_layer_minus_global": ("global_any_layer", "global")}
    hard, soft = ("routed", f"routed_{other}") if mode == "hard" else (f"routed_{other}", "routed")
    pairs["hard_minus_soft"] = (hard, soft)
    out = {}
    for name, (a, b) in pairs.items():
        for key in COMPARED:
            out[f"{name}_{key}"] = paired_difference([r[f"{a}_{key}"] for r in rows], [r[f"{b}_{key}"] for r in rows], seed)
    return out


def summarise_split(rows: list[dict], mode: str, n_layers: int, seed: int) -> tuple[dict, list[dict]]:
    """(metrics of one split, per-category rows): means, intervals and the paired comparisons."""
    other = OTHER_MODE[mode]
    names = ("routed", "oracle", "global", "global_any_layer", "random", f"routed_{other}")
    out = {"n_prompts": len(rows)}
    out.update(_rounded(mean_interval([r["routed_correctly"] for r in rows], seed).as_dict("routing_accuracy")))
    out["skipped_fraction"] = round(float(np.mean([r["skipped_layers"] for r in rows])) / n_layers, 4)
    out["mean_scored_positions"] = round(float(np.mean([r["n_scored"] for r in rows])), 2)
    for name in names:
        for key in METRICS:
            out[f"{name}_{key}"] = round(float(np.mean([r[f"{name}_{key}"] for r in rows])), 4)
    for name, interval in comparisons(rows, mode, seed).items():
        out.update(_rounded(interval.as_dict(name)))
    per_category = []
    for category in sorted({r["category"] for r in rows}):
        members = [r for r in rows if r["category"] == category]
        row = {"category": category, "n": len(members),
               "routing_accuracy": round(float(np.mean([r["routed_correctly"] for r in members])), 4)}
        for name in names:
            for key in METRICS:
                row[f"{name}_{key}"] = round(float(np.mean([r[f"{name}_{key}"] for r in members])), 4)
        per_category.append(row)
    for name in names:
        out[f"{name}_categories_passing"] = sum(r[f"{name}_top1"] >= PASS_TOP1 for r in per_category)
    return out, per_category


def validate(decoder: RoutedDecoder, tokenizer, prompts_by_split: dict[str, dict[str, list[str]]], n_continuation: int,
             seed: int, progress: bool = True) -> tuple[dict, list[dict], list[dict]]:
    """(metrics, per-category rows, per-prompt rows) for each split in `prompts_by_split`."""
    mode = decoder.settings.mode
    n_layers = decoder.model.config.num_hidden_layers
    rng = np.random.default_rng(seed)
    metrics = {"mode": mode, "pass_criterion": f"top-1 agreement >= {PASS_TOP1}"}
    per_category: dict[str, dict] = {}
    per_prompt = []
    for split, by_category in prompts_by_split.items():
        rows = score_split(decoder, tokenizer, by_category, n_continuation, rng, split, progress)
        metrics[split], categories = summarise_split(rows, mode, n_layers, seed)
        for row in categories:  # one row per category, each split's columns prefixed with its name
            per_category.setdefault(row["category"], {"category": row["category"]}).update(
                {f"{split}_{k}": v for k, v in row.items() if k != "category"})
        per_prompt += rows
    return metrics, list(per_category.values()), per_prompt


def _rounded(values: dict, digits: int = 4) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}
