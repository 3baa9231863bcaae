"""Does routed skipping preserve the output? Held-out prompts, per category, under several plans:
routed hard, the same layers soft-skipped, and controls with the same number of layers chosen
at random or by one global plan (the pooled importance of all categories)."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from ais.decoder import RoutedDecoder
from ais.plan import lowest_layers, make_plan, random_layers, candidate_layers
from ais.quality import compare, make_reference

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
        groups: dict = {}
        for i, plan in enumerate(plans):
            groups.setdefault(plan, []).append(i)
        for plan, members in groups.items():
            sub = ref if len(members) == len(plans) else ref.rows(members)
            scores = compare(model, sub, plan)
            for key in rows:
                rows[key][members] = scores[key].cpu().numpy()
        out[name] = rows
    return out


def validate(decoder: RoutedDecoder, tokenizer, prompts_by_category: dict[str, list[str]], n_continuation: int,
             seed: int, progress: bool = True):
    """(overall metrics, per-category rows) for routed hard / routed soft / random hard / global hard."""
    model, settings = decoder.model, decoder.settings
    rng = np.random.default_rng(seed)
    n_layers = model.config.num_hidden_layers
    per_category, pooled = [], {}
    for category in tqdm(sorted(prompts_by_category), desc="validate", unit="category", disable=not progress):
        prompts = prompts_by_category[category]
        routes = decoder.route_prompts(tokenizer, prompts)
        ref = make_reference(model, tokenizer, prompts, n_continuation)
        routed_layers = [r.plan.layers for r in routes]
        conditions = {
            "routed_hard": [make_plan(ls, "hard", settings.alpha) for ls in routed_layers],
            "routed_soft": [make_plan(ls, "soft", settings.alpha) for ls in routed_layers],
            "random_hard": [make_plan(random_layers(n_layers, decoder.pivot, len(ls), rng), "hard", settings.alpha)
                            for ls in routed_layers],
            "global_hard": [make_plan(global_layers(decoder, len(ls)), "hard", settings.alpha) for ls in routed_layers],
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
    for name in ("routed_hard", "routed_soft", "random_hard", "global_hard"):
        overall[f"{name}_categories_passing"] = sum(r[f"{name}_top1"] >= PASS_TOP1 for r in per_category)
    overall["pass_criterion"] = f"top-1 agreement >= {PASS_TOP1}"
    return overall, per_category
