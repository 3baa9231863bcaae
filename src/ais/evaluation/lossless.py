"""Measuring the drafters per category, and choosing one: tokens/s against plain greedy in the
same run, acceptance, mean accepted tokens per verify step, and exact match with plain greedy."""
from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache
from tqdm import tqdm

from ais.decoding.speculative import (ABLATIONS, DRAFTERS, forward_tokens, make_drafter, speculative_generate,
                                     truncate_cache)
from ais.evaluation.timing import time_interleaved
from ais.model.prompts import chat_ids, context_length


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


def _totals() -> dict:
    """Running sums of one drafter's generations."""
    return {"tokens": 0, "seconds": 0.0, "steps": 0, "drafted": 0, "accepted": 0, "exact": [], "thresholds": [],
            "draft_seconds": 0.0, "verify_seconds": 0.0}


def _summary(t: dict, base_rate: float) -> dict:
    rate = t["tokens"] / t["seconds"]
    return {"tok_per_s": round(rate, 2), "speedup": round(rate / base_rate, 4),
            "acceptance_rate": round(t["accepted"] / t["drafted"], 4) if t["drafted"] else 0.0,
            "mean_accepted": round(t["accepted"] / t["steps"], 4) if t["steps"] else 0.0,
            "exact_match": round(float(np.mean(t["exact"])), 4),
            "draft_ms_per_token": round(1000 * t["draft_seconds"] / t["drafted"], 3) if t["drafted"] else 0.0,
            "verify_ms_per_step": round(1000 * t["verify_seconds"] / t["steps"], 3) if t["steps"] else 0.0,
            **({"final_threshold_range": [round(min(t["thresholds"]), 4), round(max(t["thresholds"]), 4)]}
               if t["thresholds"] else {})}


def measure(decoder, tokenizer, prompts_by_category: dict[str, list[str]], gamma: int, confidence: float,
            max_new_tokens: int, ngram: int, draft_fraction: float, min_speedup: float = 1.0, progress: bool = True):
    """(per-category results with the chosen drafter, overall metrics, one example generation).
    Every drafter (and ablation) runs on every prompt, interleaved with plain greedy decoding."""
    model = decoder.model
    eos = tokenizer.eos_token_id
    names = DRAFTERS + ABLATIONS
    limit = context_length(model) - max_new_tokens - gamma - 1
    warm = chat_ids(tokenizer, "Hello", limit)
    for name in names:  # warm-up of every code path
        speculative_generate(model, warm, 4, make_drafter(name, decoder.plan_for(decoder.topo.categories[0], mode="hard"),
                                                          confidence, ngram), gamma)
    overall_totals = {n: _totals() for n in names}
    per_category, example = {}, None
    for category in tqdm(sorted(prompts_by_category), desc="lossless", unit="category", disable=not progress):
        totals = {n: _totals() for n in names}
        routes = decoder.route_prompts(tokenizer, prompts_by_category[category])
        for prompt, route in zip(prompts_by_category[category], routes):
            plan = decoder.plan_for(route.category, draft_fraction, mode="hard")
            ids = chat_ids(tokenizer, prompt, limit)
            reference = None
            for name in names:
                drafter = make_drafter(name, plan, confidence, ngram)
                tokens, stats = speculative_generate(model, ids, max_new_tokens, drafter, gamma, eos_token_id=eos)
                if name == "none":
                    reference = tokens
                    if example is None:
                        example = {"category": category, "prompt": prompt, "reply": tokenizer.decode(tokens, skip_special_tokens=True)}
                for t in (totals[name], overall_totals[name]):
                    t["tokens"] += len(tokens)
                    t["seconds"] += stats.seconds
                    t["steps"] += stats.steps
                    t["drafted"] += stats.drafted
                    t["accepted"] += stats.accepted
                    t["draft_seconds"] += stats.draft_seconds
                    t["verify_seconds"] += stats.verify_seconds
                    t["exact"].append(tokens == reference)
                    if hasattr(drafter, "threshold"):
                        t["thresholds"].append(drafter.threshold)
        base = totals["none"]["tokens"] / totals["none"]["seconds"]
        row = {name: _summary(t, base) for name, t in totals.items()}
        best = max(("routed_skip", "prompt_lookup"), key=lambda n: row[n]["speedup"])
        chosen = best if row[best]["speedup"] > min_speedup else "none"
        per_category[category] = {"drafter": chosen, "speedup": row[chosen]["speedup"],
                                  "exact_match": row[chosen]["exact_match"], "mean_accepted": row[chosen]["mean_accepted"],
                                  "n_prompts": len(prompts_by_category[category]), "drafters": row}
    base = overall_totals["none"]["tokens"] / overall_totals["none"]["seconds"]
    exact = [e for t in overall_totals.values() for e in t["exact"]]
    cost = verify_cost(model, chat_ids(tokenizer, prompts_by_category[sorted(prompts_by_category)[0]][0], limit), gamma + 1)
    overall = {"exact_match_all_drafters": round(float(np.mean(exact)), 4), "n_generations": len(exact),
               "drafters": {name: _summary(t, base) for name, t in overall_totals.items()},
               "verify_ms_by_tokens": cost,
               "max_new_tokens": max_new_tokens, "gamma": gamma, "confidence": confidence, "ngram": ngram,
               "draft_fraction": draft_fraction}
    return per_category, overall, example
