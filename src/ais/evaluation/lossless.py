"""Measuring the drafters per category, and choosing one: tokens/s against plain greedy in the
same run, acceptance, mean accepted tokens per verify step, and exact match with plain greedy.

Bookkeeping that keeps the reported speedup honest: each category's drafter is chosen on
calibration prompts and its speedup is reported on other (test) prompts; the routing a drafter
needs (the routed skip plan; for the chosen-drafter system, the category itself) is inside its
clock; exact match counts drafted generations only (plain greedy is the reference itself)."""
from __future__ import annotations

import time

import numpy as np
import torch
from transformers import DynamicCache
from tqdm import tqdm

from ais.decoding.speculative import (ABLATIONS, DRAFTERS, forward_tokens, make_drafter, speculative_generate,
                                     truncate_cache)
from ais.device import synchronize
from ais.evaluation.statistics import mean_interval
from ais.evaluation.timing import time_interleaved
from ais.model.prompts import chat_ids, context_length

CHOICES = ("routed_skip", "prompt_lookup")  # what a category may choose instead of no draft
ROUTED = ("routed_skip", *ABLATIONS)        # drafters that need the prompt's route


@torch.inference_mode()
def verify_cost(model, ids: list[int], max_tokens: int, warmup: int = 2, repeats: int = 10) -> dict[int, float]:
    """Median milliseconds of one cached full-model forward over n = 1..max_tokens new tokens after
    `ids`: what a verify step of n tokens costs (n = 1 is a plain decoding step)."""
    cache = DynamicCache(config=model.config)
    forward_tokens(model, ids, cache)
    filled = cache.get_seq_length()

    def step(n: int):
        def call():
            forward_tokens(model, ids[-n:], cache)
            truncate_cache(cache, filled)
        return call

    times = time_interleaved({n: step(n) for n in range(1, max_tokens + 1)}, model.device, warmup, repeats)
    return {n: round(1000 * float(np.median(t)), 2) for n, t in times.items()}


def route_seconds(decoder, tokenizer, prompt: str):
    """(route, seconds) of routing one prompt as the system would: router forward and map lookup."""
    synchronize(decoder.model.device)
    start = time.perf_counter()
    route = decoder.route_prompts(tokenizer, [prompt], mode="hard")[0]
    synchronize(decoder.model.device)
    return route, time.perf_counter() - start


def generate_all(decoder, tokenizer, prompts_by_category: dict[str, list[str]], split: str, gamma: int,
                 confidence: float, max_new_tokens: int, ngram: int, draft_fraction: float,
                 progress: bool = True) -> list[dict]:
    """One row per prompt and drafter (every drafter and ablation on every prompt, one after another):
    tokens, seconds (routing included for the drafters that need it), steps, drafted and accepted
    tokens, and whether the output equals plain greedy decoding's."""
    model, eos = decoder.model, tokenizer.eos_token_id
    limit = context_length(model) - max_new_tokens - gamma - 1
    rows = []
    for category in tqdm(sorted(prompts_by_category), desc=f"lossless {split}", unit="category", disable=not progress):
        for i, prompt in enumerate(prompts_by_category[category]):
            route, routing_s = route_seconds(decoder, tokenizer, prompt)
            plan = decoder.plan_for(route.category, draft_fraction, mode="hard")
            ids = chat_ids(tokenizer, prompt, limit)
            reference = None
            for name in DRAFTERS + ABLATIONS:
                drafter = make_drafter(name, plan, confidence, ngram)
                tokens, stats = speculative_generate(model, ids, max_new_tokens, drafter, gamma, eos_token_id=eos)
                reference = tokens if name == "none" else reference
                rows.append({"split": split, "category": category, "prompt": i, "routed_category": route.category,
                             "drafter": name, "tokens": len(tokens),
                             "seconds": stats.seconds + (routing_s if name in ROUTED else 0.0),
                             "routing_seconds": routing_s, "steps": stats.steps, "drafted": stats.drafted,
                             "accepted": stats.accepted, "draft_seconds": stats.draft_seconds,
                             "verify_seconds": stats.verify_seconds, "exact": int(tokens == reference),
                             "threshold": getattr(drafter, "threshold", None),
                             "text": tokenizer.decode(tokens, skip_special_tokens=True) if name == "none" else ""})
    return rows


def summarise(rows: list[dict], name: str) -> dict:
    """Totals of one drafter's rows against plain greedy on the same prompts."""
    mine = [r for r in rows if r["drafter"] == name]
    base = [r for r in rows if r["drafter"] == "none"]
    rate = sum(r["tokens"] for r in mine) / sum(r["seconds"] for r in mine)
    base_rate = sum(r["tokens"] for r in base) / sum(r["seconds"] for r in base)
    drafted, steps = sum(r["drafted"] for r in mine), sum(r["steps"] for r in mine)
    out = {"tok_per_s": round(rate, 2), "speedup": round(rate / base_rate, 4),
           "acceptance_rate": round(sum(r["accepted"] for r in mine) / drafted, 4) if drafted else 0.0,
           "mean_accepted": round(sum(r["accepted"] for r in mine) / steps, 4) if steps else 0.0,
           "draft_ms_per_token": round(1000 * sum(r["draft_seconds"] for r in mine) / drafted, 3) if drafted else 0.0,
           "verify_ms_per_step": round(1000 * sum(r["verify_seconds"] for r in mine) / steps, 3) if steps else 0.0}
    if name != "none":
        out["exact_match"] = round(float(np.mean([r["exact"] for r in mine])), 4)
    thresholds = [r["threshold"] for r in mine if r["threshold"] is not None]
    if thresholds:
        out["final_threshold_range"] = [round(min(thresholds), 4), round(max(thresholds), 4)]
    return out


def choose_drafters(calibration: list[dict], min_speedup: float) -> dict[str, str]:
    """Per category, the drafter with the best speedup on the calibration prompts if it beats plain
    greedy by more than `min_speedup`, else none."""
    chosen = {}
    for category in sorted({r["category"] for r in calibration}):
        rows = [r for r in calibration if r["category"] == category]
        speed = {name: summarise(rows, name)["speedup"] for name in CHOICES}
        best = max(CHOICES, key=lambda n: speed[n])
        chosen[category] = best if speed[best] > min_speedup else "none"
    return chosen


def system_speedup(test: list[dict], chosen: dict[str, str], seed: int) -> dict:
    """The chosen-drafter system on the test prompts: every prompt is routed (the choice needs its
    category; routing by the routed category, as deployed), then decoded with that category's drafter.
    Speedup of total tokens/s over plain greedy, and the mean per-prompt speedup with its interval."""
    by_prompt: dict[tuple, dict] = {}
    for r in test:
        by_prompt.setdefault((r["category"], r["prompt"]), {})[r["drafter"]] = r
    plain, system = [], []
    for drafters in by_prompt.values():
        base = drafters["none"]
        name = chosen.get(base["routed_category"], "none")
        used = drafters[name]
        seconds = used["seconds"] + (0.0 if name in ROUTED else used["routing_seconds"])
        plain.append((base["tokens"], base["seconds"]))
        system.append((used["tokens"], seconds))
    rate = sum(t for t, _ in system) / sum(s for _, s in system)
    base_rate = sum(t for t, _ in plain) / sum(s for _, s in plain)
    per_prompt = mean_interval([p[1] / s[1] for p, s in zip(plain, system)], seed)
    return {"speedup": round(rate / base_rate, 4), **{k: round(v, 4) for k, v in per_prompt.as_dict("per_prompt_speedup").items()}}


def measure(decoder, tokenizer, calibration: dict[str, list[str]], test: dict[str, list[str]], gamma: int,
            confidence: float, max_new_tokens: int, ngram: int, draft_fraction: float, min_speedup: float,
            seed: int, progress: bool = True):
    """(per-category results, overall metrics, per-generation rows, one example generation)."""
    model = decoder.model
    limit = context_length(model) - max_new_tokens - gamma - 1
    warm = chat_ids(tokenizer, "Hello", limit)
    for name in DRAFTERS + ABLATIONS:  # warm-up of every code path
        plan = decoder.plan_for(decoder.topo.categories[0], mode="hard")
        speculative_generate(model, warm, 4, make_drafter(name, plan, confidence, ngram), gamma)
    args = (gamma, confidence, max_new_tokens, ngram, draft_fraction)
    rows = generate_all(decoder, tokenizer, calibration, "calibration", *args, progress=progress)
    rows += generate_all(decoder, tokenizer, test, "test", *args, progress=progress)
    chosen = choose_drafters([r for r in rows if r["split"] == "calibration"], min_speedup)
    test_rows = [r for r in rows if r["split"] == "test"]
    per_category = {}
    for category in sorted(test):
        mine = [r for r in test_rows if r["category"] == category]
        drafters = {name: summarise(mine, name) for name in DRAFTERS + ABLATIONS}
        per_category[category] = {"drafter": chosen[category], "speedup": drafters[chosen[category]]["speedup"],
                                  "n_prompts": len(test[category]), "drafters": drafters}
    drafted = [r["exact"] for r in rows if r["drafter"] != "none"]
    first = next(r for r in test_rows if r["drafter"] == "none")
    overall = {"exact_match_drafted": round(float(np.mean(drafted)), 4), "n_drafted_generations": len(drafted),
               "n_calibration_prompts": sum(len(p) for p in calibration.values()),
               "n_test_prompts": sum(len(p) for p in test.values()),
               "drafters": {name: summarise(test_rows, name) for name in DRAFTERS + ABLATIONS},
               "chosen_system": system_speedup(test_rows, chosen, seed),
               "verify_ms_by_tokens": verify_cost(model, chat_ids(tokenizer, test[first["category"]][0], limit), gamma + 1),
               "max_new_tokens": max_new_tokens, "gamma": gamma, "confidence": confidence, "ngram": ngram,
               "draft_fraction": draft_fraction}
    example = {"category": first["category"], "prompt": test[first["category"]][0], "reply": first["text"]}
    for r in rows:
        r.pop("text")
    return per_category, overall, rows, example
