"""Does routed skipping preserve the output? Held-out prompts, per category, under several plans,
all in `skip.mode`: routed, and controls with the same number of layers chosen at random or by
one global plan (the pooled importance of all categories); plus the routed layers in the other
mode (hard vs soft)."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from ais.decoding.routed import RoutedDecoder
from ais.evaluation.quality import compare, make_reference
from ais.model.gating import group_by_plan
from ais.routing.plans import OTHER_MODE, candidate_layers, lowest_layers, make_plan, random_layers

PASS_TOP1 = 0.95  # the original's criterion for a category to pass


def global_layers(decoder: RoutedDecoder, n: int) -> list[int]:
    """One plan for every prompt: the lowest layers of the importance averaged over categories."""
    pooled = decoder.topo.importance.mean(0)
    return lowest_layers(pooled, candidate_layers(pooled, decoder.pivot, decoder.settings.critical), n)


def score_plans(model, ref, plans_per_row: dict[str, list]) -> dict[str, dict[str, np.ndarray]]:
    """For each condition, per-row KL / top-1 / top-5 under that row's plan; rows sharing a
    plan are scored in one forward."""
    out = {}
    for name, plans in plans_per_row.items():
        rows = {"kl": np.zeros(len(plans)), "top1": np.zeros(len(plans)), "top5": np.zeros(len(plans))}
        for plan, members in group_by_plan(plans).items():
            sub = ref if len(members) == len(plans) else ref.rows(members)
            scores = compare(model, sub, plan)
            for key in rows:
                rows[key][members] = scores[key].cpu().numpy()
        out[name] = rows
    return out


def validate(decoder: RoutedDecoder, tokenizer, prompts_by_category: dict[str, list[str]], n_continuation: int,
             seed: int, progress: bool = True):
    """(overall metrics, per-category rows) for routed / random / global in `skip.mode`, and the
    routed layers in the other mode (`routed_soft` when the mode is hard, `routed_hard` when soft)."""
    model, settings = decoder.model, decoder.settings
    mode, other = settings.mode, OTHER_MODE[settings.mode]
    rng = np.random.default_rng(seed)
    n_layers = model.config.num_hidden_layers
    per_category, pooled = [], {}
    for category in tqdm(sorted(prompts_by_category), desc="validate", unit="category", disable=not progress):
        prompts = prompts_by_category[category]
        routes = decoder.route_prompts(tokenizer, prompts)
        ref = make_reference(model, tokenizer, prompts, n_continuation)
        routed_layers = [r.plan.layers for r in routes]
        conditions = {
            "routed": [r.plan for r in routes],
            "random": [make_plan(random_layers(n_layers, decoder.pivot, len(ls), rng), mode, settings.alpha)
                       for ls in routed_layers],
            "global": [make_plan(global_layers(decoder, len(ls)), mode, settings.alpha) for ls in routed_layers],
            f"routed_{other}": [make_plan(ls, other, settings.alpha) for ls in routed_layers],
        }
        scores = score_plans(model, ref, conditions)
        row = {"category": category, "n": len(prompts),
               "routing_accuracy": round(float(np.mean([r.category == category for r in routes])), 4),
               "skipped_fraction": round(float(np.mean([len(ls) for ls in routed_layers])) / n_layers, 4)}
        for name, metric in scores.items():
            for key, values in metric.items():
                row[f"{name}_{key}"] = round(float(values.mean()), 4)
                pooled.setdefault(f"{name}_{key}", []).extend(values.tolist())
        pooled.setdefault("routing_accuracy", []).extend([r.category == category for r in routes])
        pooled.setdefault("skipped_fraction", []).extend([len(ls) / n_layers for ls in routed_layers])
        per_category.append(row)
    overall = {key: round(float(np.mean(values)), 4) for key, values in pooled.items()}
    overall["n_prompts"] = sum(r["n"] for r in per_category)
    overall["mode"] = mode
    for name in ("routed", "random", "global", f"routed_{other}"):
        overall[f"{name}_categories_passing"] = sum(r[f"{name}_top1"] >= PASS_TOP1 for r in per_category)
    overall["pass_criterion"] = f"top-1 agreement >= {PASS_TOP1}"
    return overall, per_category
