"""Does routed skipping preserve the output? Held-out prompts of seen tasks (`heldout`) and of tasks
the map never saw (`heldout_task`), per category, teacher-forced (the plan skips the prompt too):
  routed — the plan the decoder runs (`skip.plan`'s method, in `skip.mode`);
  and every method `validate.methods` names, each given as many layers as the routed plan per prompt,
  for example oracle (the true category's plan: a wrong route vs a category plan no better), global
  (one plan for every prompt), global_any_layer (the global plan allowed below the pivot: what the
  pivot rule costs) and random (layers drawn at random from the range a plan may use);
plus the routed layers in the other mode (hard vs soft). Every prompt's scores are kept, so any two
conditions are compared pairwise, with a bootstrap interval over prompts."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from ais.evaluation.calibration import calibrated
from ais.evaluation.quality import METRICS, make_reference, score_conditions
from ais.evaluation.statistics import mean_interval, paired_difference, rounded
from ais.model.plan import make_plan
from ais.routing.budget import OTHER_MODE

PASS_TOP1 = 0.95  # the original's criterion for a category to pass
COMPARED = ("top1", "kl")  # the metrics every comparison is reported for, headline first


def conditions(decoder, methods: dict, requests: list, routed: list) -> dict[str, list]:
    """The plan of every prompt under each condition: the routed plans, each method's plan with as many
    layers as the routed plan of that prompt, and the routed layers in the other mode."""
    settings = decoder.settings
    other = OTHER_MODE[settings.mode]
    out = {"routed": routed}
    for name, method in methods.items():
        out[name] = [method.plan(request, decoder.setup.budget(len(plan.layers))) for request, plan in zip(requests, routed)]
    out[f"routed_{other}"] = [make_plan(p.layers, other, settings.alpha) for p in routed]
    return out


def score_split(decoder, tokenizer, prompts_by_category: dict[str, list[str]], methods: dict, n_continuation: int,
                split: str, progress: bool = True, references=None) -> list[dict]:
    """One row per prompt: where it was routed, how many positions were scored, and every
    condition's KL / top-1 / top-5."""
    engine = decoder.engine
    rows = []
    for category in tqdm(sorted(prompts_by_category), desc=f"validate {split}", unit="category", disable=not progress):
        prompts = prompts_by_category[category]
        routes = decoder.route_prompts(tokenizer, prompts)
        if references is not None:  # computed once by the reference stage, in these very batches
            ref = references.get(f"validate/{split}/{category}", prompts, "forced")
        else:
            ref = make_reference(engine, tokenizer, prompts, n_continuation, "forced")
        requests = decoder.requests(routes, prompts, truth=[category] * len(prompts),
                                    references=[ref.rows([i]) for i in range(len(prompts))])
        scores = score_conditions(engine, ref, conditions(decoder, methods, requests, [r.plan for r in routes]))
        n_scored = ref.scored.sum(1).long().tolist()
        for i, route in enumerate(routes):
            row = {"split": split, "category": category, "prompt": i, "routed_category": route.category,
                   "routed_correctly": int(route.category == category), "skipped_layers": len(route.plan.layers),
                   "n_scored": n_scored[i]}
            for name, metric in scores.items():
                row.update({f"{name}_{key}": round(float(metric[key][i]), 6) for key in METRICS})
            rows.append(row)
    return rows


def pairs(names: list[str], mode: str) -> dict[str, tuple[str, str]]:
    """Every comparison the report makes: routed against each method, the pivot control against the
    global plan, hard against soft."""
    other = OTHER_MODE[mode]
    out = {f"routed_minus_{n}": ("routed", n) for n in names if n not in ("routed", f"routed_{other}")}
    if "global_any_layer" in names and "global" in names:
        out["global_any_layer_minus_global"] = ("global_any_layer", "global")
    out["hard_minus_soft"] = ("routed", f"routed_{other}") if mode == "hard" else (f"routed_{other}", "routed")
    return out


def comparisons(rows: list[dict], names: list[str], mode: str, seed: int) -> dict:
    """Paired differences over prompts (95% bootstrap intervals) for every comparison the report makes."""
    out = {}
    for name, (a, b) in pairs(names, mode).items():
        for key in COMPARED:
            out[f"{name}_{key}"] = paired_difference([r[f"{a}_{key}"] for r in rows], [r[f"{b}_{key}"] for r in rows], seed)
    return out


def summarise_split(rows: list[dict], names: list[str], mode: str, n_layers: int, seed: int) -> tuple[dict, list[dict]]:
    """(metrics of one split, per-category rows): means, intervals and the paired comparisons."""
    out = {"n_prompts": len(rows)}
    out.update(rounded(mean_interval([r["routed_correctly"] for r in rows], seed).as_dict("routing_accuracy")))
    out["skipped_fraction"] = round(float(np.mean([r["skipped_layers"] for r in rows])) / n_layers, 4)
    out["mean_scored_positions"] = round(float(np.mean([r["n_scored"] for r in rows])), 2)
    for name in names:
        for key in METRICS:
            out[f"{name}_{key}"] = round(float(np.mean([r[f"{name}_{key}"] for r in rows])), 4)
    for name, interval in comparisons(rows, names, mode, seed).items():
        out.update(rounded(interval.as_dict(name)))
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


def validate(decoder, tokenizer, prompts_by_split: dict[str, dict[str, list[str]]], method_names: list[str],
             n_continuation: int, seed: int, calibration_prompts: dict[str, list[str]] | None = None,
             progress: bool = True, references=None) -> tuple[dict, list[dict], list[dict]]:
    """(metrics, per-category rows, per-prompt rows) for each split in `prompts_by_split`, with the
    methods `method_names` beside the routed plan (calibrated on `calibration_prompts` where they ask);
    the full model's references from `references` (the reference stage's) where given."""
    mode = decoder.settings.mode
    decoder.setup.seed = seed  # the random control's draws
    methods = calibrated(decoder, tokenizer, method_names, calibration_prompts, n_continuation, "forced",
                         references=references)
    names = ["routed", *methods, f"routed_{OTHER_MODE[mode]}"]
    metrics = {"mode": mode, "plan": decoder.settings.plan, "methods": list(methods),
               "pass_criterion": f"top-1 agreement >= {PASS_TOP1}"}
    per_category: dict[str, dict] = {}
    per_prompt = []
    for split, by_category in prompts_by_split.items():
        rows = score_split(decoder, tokenizer, by_category, methods, n_continuation, split, progress, references)
        metrics[split], categories = summarise_split(rows, names, mode, decoder.engine.n_layers, seed)
        for row in categories:  # one row per category, each split's columns prefixed with its name
            per_category.setdefault(row["category"], {"category": row["category"]}).update(
                {f"{split}_{k}": v for k, v in row.items() if k != "category"})
        per_prompt += rows
    return metrics, list(per_category.values()), per_prompt
