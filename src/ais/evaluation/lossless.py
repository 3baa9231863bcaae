"""Measuring lossless decoding against what a user already runs: transformers `generate` (greedy,
and with its prompt lookup) in bfloat16 and float32, beside the project's loop with each drafter,
on the same prompts in one run, in a seeded random order per prompt.

Bookkeeping that keeps the reported speedup honest: each category's drafter is chosen on
calibration prompts (where only the system's dtype and the candidates are run) and its speedup,
like every other number, is reported on other (test) prompts; the routing a drafter
needs (the routed skip plan; for the chosen-drafter system, the category itself) is inside its
clock. Every speedup is against `generate` greedy in bfloat16, and also against `generate` in
the same dtype.

Exactness: in float32 every generation must equal `generate`'s tokens. In bfloat16 a k-token
verify rounds differently from k one-token steps, so a token can flip where the reference's top-1
and top-2 logits nearly tie; the stage measures that rounding (`rounding_delta`) and checks that
every divergence happens at a reference margin below the bound (twice the largest logit change
seen: a flip needs the margin to close, and each of the two logits moves at most that much)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import brentq
from tqdm import tqdm

from ais.decoding.speculative import (ABLATIONS, drafter_for_route, forward_tokens, prefill_logits,
                                     speculative_generate)
from ais.device import Stopwatch, time_interleaved
from ais.evaluation.statistics import mean_interval, ratio_of_rates_interval
from ais.model.engine import Engine
from ais.model.prompts import chat_ids, context_length
from ais.params import DRAFT_CHOICES

BASELINES = ("generate", "generate_prompt_lookup")  # transformers, as a user calls it (prompt lookup at the
LOOKUP = "generate_prompt_lookup"                    # `prompt_lookup_num_tokens` fastest on the calibration prompts)
CHOICES = DRAFT_CHOICES                              # what a category may choose instead of no draft
                                                     # (`lossless.drafters` says which are measured)
ROUTED = ("routed_skip", "clasp", "suffix", *ABLATIONS)  # drafters that need the prompt's route (CLaSp: its M;
                                                     # suffix: its router embedding, for the nearest replies)
SYSTEM = "system"                                    # each prompt decoded with its routed category's drafter
REFERENCE_DTYPE = "bfloat16"                         # every speedup is against `generate` greedy in this dtype


@torch.inference_mode()
def generate_baseline(model, ids: list[int], max_new_tokens: int, eos_token_id: int | None,
                      lookup: int | None = None) -> tuple[list[int], float]:
    """(tokens, seconds) of transformers' greedy `generate`, with `prompt_lookup_num_tokens=lookup`
    when given; tokens up to and including the end-of-sequence token."""
    x = torch.tensor([ids], device=model.device)
    extra = {"prompt_lookup_num_tokens": lookup} if lookup else {}
    with Stopwatch(model.device) as clock:
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos_token_id, pad_token_id=model.generation_config.pad_token_id or 0,
                             top_p=None, top_k=None, temperature=None, **extra)
        tokens = out[0, len(ids):].tolist()
    return tokens, clock.seconds


def _chunked(flight, first: torch.Tensor, tokens: list[int], k: int) -> torch.Tensor:
    rows = [first]
    for start in range(0, len(tokens) - 1, k):
        rows.append(forward_tokens(flight, tokens[start:min(start + k, len(tokens) - 1)]))
    return torch.cat(rows).float()


@torch.inference_mode()
def continuation_logits(model, ids: list[int], tokens: list[int], k: int = 1) -> torch.Tensor:
    """Logits (len(tokens) x vocab, float32) that predict each of `tokens` after the prompt `ids`: the
    prefill, then cached forwards of k tokens (k = 1: as `generate` computes them; k > 1: as a verify)."""
    flight, first = prefill_logits(Engine(model), ids)
    return _chunked(flight, first, tokens, k)


@torch.inference_mode()
def rounding_delta(model, ids: list[int], tokens: list[int], max_chunk: int, steps: torch.Tensor | None = None) -> float:
    """The largest logit difference between k-token forwards (k = 2..max_chunk) and one-token steps
    over one continuation (`steps`: the one-token logits, when already computed). One prefill: the
    cache goes back to the prompt before each width."""
    flight, first = prefill_logits(Engine(model), ids)
    filled = flight.cache.length(0)
    deltas = []
    for k in ([] if steps is not None else [1]) + list(range(2, max_chunk + 1)):
        flight.truncate(filled)
        logits = _chunked(flight, first, tokens, k)
        if k == 1:
            steps = logits
        else:
            deltas.append(float((logits - steps).abs().max()))
    return max(deltas, default=0.0)


def margin_at_divergence(steps: torch.Tensor, reference: list[int], tokens: list[int]) -> tuple[int, float] | None:
    """(first position where `tokens` leave `reference`, the reference's top-1 minus top-2 logit
    there, from `steps`, the one-token logits that predict each reference token), or None where they
    agree (one stopping earlier counts from where it stopped)."""
    n = min(len(reference), len(tokens))
    first = next((i for i in range(n) if reference[i] != tokens[i]), None)
    if first is None:
        if len(reference) == len(tokens):
            return None
        first = n
    if first >= len(reference):
        return first, float("nan")
    top2 = steps[first].topk(2).values
    return first, float(top2[0] - top2[1])


@torch.inference_mode()
def verify_cost(model, ids: list[int], max_tokens: int, warmup: int = 2, repeats: int = 10) -> dict[int, float]:
    """Median milliseconds of one cached full-model forward over n = 1..max_tokens new tokens after
    `ids`: what a verify step of n tokens costs (n = 1 is a plain decoding step)."""
    flight, _ = prefill_logits(Engine(model), ids)
    filled = flight.cache.length(0)

    def step(n: int):
        def call():
            forward_tokens(flight, ids[-n:])
            flight.truncate(filled)
        return call

    times = time_interleaved({n: step(n) for n in range(1, max_tokens + 1)}, model.device, warmup, repeats)
    return {n: round(1000 * float(np.median(t)), 2) for n, t in times.items()}


def route_seconds(decoder, tokenizer, prompt: str):
    """(route, seconds) of routing one prompt on its own: router forward and map lookup (what a
    verifier in another dtype than the router's model pays on top of its prefill)."""
    with Stopwatch(decoder.model.device) as clock:
        route = decoder.route_prompts(tokenizer, [prompt], mode="full")[0]
    return route, clock.seconds


OTHER_DTYPE = ("none", "prompt_lookup", "suffix")  # beside the baselines in the dtype the system does not run in


def variants(dtypes: list[str], system_dtype: str, drafters: tuple[str, ...] = CHOICES,
             ablations: bool = False) -> list[tuple[str, str]]:
    """(dtype, decoder) pairs measured on every test prompt: in the system's dtype the baselines, the
    loop with no draft and with each of `drafters`, and the chosen-drafter system (with `ablations`,
    also the routed drafter without each of its two refinements: the full-size run's); in every other
    dtype transformers' greedy `generate` and the loop without a draft and with the model-free
    drafters, for exactness in that dtype (the layer-skip drafters' exactness in every dtype is the
    tests' job)."""
    out = [(system_dtype, name) for name in BASELINES + ("none", *drafters, SYSTEM) + (ABLATIONS if ablations else ())]
    other = ("generate",) + tuple(n for n in OTHER_DTYPE if n == "none" or n in drafters)
    return out + [(d, name) for d in dtypes if d != system_dtype for name in other]


def run_decoder(decoder, model, ids: list[int], prompt: str, tokenizer, name: str, settings: dict,
                chosen: dict[str, str], datastore=None) -> tuple[list[int], dict]:
    """One generation by decoder `name` on `model`, timed as deployed: (tokens, row fields). Drafters
    that need the prompt's route (the routed ones, and the system, whose drafter is its category's)
    get it from the prefill when `model` is the router's model, else from a routing pass in the clock."""
    eos, gamma, n_new = tokenizer.eos_token_id, settings["gamma"], settings["max_new_tokens"]
    if name.split("@")[0] in BASELINES:  # generate_prompt_lookup@n: the sweep's setting n
        lookup = None if name == "generate" else int(name.split("@")[1]) if "@" in name else settings["lookup"]
        tokens, seconds = generate_baseline(model, ids, n_new, eos, lookup)
        return tokens, {"seconds": seconds, "steps": len(tokens), "drafted": 0, "accepted": 0, "draft_seconds": 0.0,
                        "verify_seconds": 0.0, "threshold": None, "clasp_updates": None, "drafter": None}
    made = []

    def drafter_for(route):
        drafter_name = chosen.get(route.category, "none") if name == SYSTEM else name
        made.append(drafter_for_route(decoder, drafter_name, route, settings, datastore))
        return made[-1]

    routing = 0.0
    if name not in ROUTED + (SYSTEM,):
        drafter, router = drafter_for(None), None  # needs no route
    elif model is decoder.model:
        drafter, router = drafter_for, decoder
    else:
        route, routing = route_seconds(decoder, tokenizer, prompt)
        drafter, router = drafter_for(route), None
    tokens, stats = speculative_generate(Engine(model), ids, n_new, drafter, gamma, eos_token_id=eos, router=router)
    return tokens, {"seconds": stats.seconds + routing, "steps": stats.steps, "drafted": stats.drafted,
                    "accepted": stats.accepted, "draft_seconds": stats.draft_seconds,
                    "verify_seconds": stats.verify_seconds, "threshold": getattr(made[-1], "threshold", None),
                    "clasp_updates": getattr(made[-1], "updates", None), "drafter": made[-1].name}


def generate_all(decoder, tokenizer, models: dict, prompts_by_category: dict[str, list[str]], split: str,
                 pairs: list[tuple[str, str]], settings: dict, seed: int, chosen: dict[str, str] | None = None,
                 progress: bool = True, datastore=None) -> list[dict]:
    """One row per prompt and (dtype, decoder) pair: tokens, seconds (routing included for the
    decoders that need it), steps, drafted and accepted tokens, and, where `generate` ran in that
    dtype, whether the tokens equal its tokens (with the first differing position and the
    reference's margin there). `chosen` is the system's drafter per category."""
    limit = context_length(decoder.model) - settings["max_new_tokens"] - settings["gamma"] - 1
    rng = np.random.default_rng(seed)
    rows = []
    for category in tqdm(sorted(prompts_by_category), desc=f"lossless {split}", unit="category", disable=not progress):
        for i, prompt in enumerate(prompts_by_category[category]):
            routed_category = decoder.route_prompts(tokenizer, [prompt], mode="full")[0].category  # bookkeeping
            ids = chat_ids(tokenizer, prompt, limit)
            done = {}
            for j in rng.permutation(len(pairs)):  # a fresh order per prompt: drift hits all alike
                dtype, name = pairs[j]
                tokens, fields = run_decoder(decoder, models[dtype], ids, prompt, tokenizer, name, settings, chosen or {},
                                             datastore)
                done[(dtype, name)] = ({"split": split, "category": category, "prompt": i,
                                        "routed_category": routed_category, "dtype": dtype, "decoder": name, **fields},
                                       tokens)
            steps = {}
            for dtype in {d for d, _ in done}:
                if (dtype, "generate") in done:  # the reference's one-token logits: margins and the rounding bound
                    row, reference = done[(dtype, "generate")]
                    steps[dtype] = continuation_logits(models[dtype], ids, reference)
                    row["rounding_delta"] = rounding_delta(models[dtype], ids, reference, settings["gamma"] + 1, steps[dtype])
            for (dtype, name), (row, tokens) in done.items():
                identical, divergence = None, None
                if dtype in steps:
                    divergence = margin_at_divergence(steps[dtype], done[(dtype, "generate")][1], tokens)
                    identical = int(divergence is None)
                row.update(tokens=len(tokens), identical=identical, token_ids=tokens,
                           first_difference=divergence[0] if divergence else None,
                           reference_margin=round(divergence[1], 4) if divergence else None,
                           text=tokenizer.decode(tokens, skip_special_tokens=True) if name == "generate" else "")
                rows.append(row)
    return rows


def _rate(rows: list[dict]) -> float:
    return sum(r["tokens"] for r in rows) / sum(r["seconds"] for r in rows)


def _per_prompt(rows: list[dict]) -> dict:
    return {(r["split"], r["category"], r["prompt"]): r for r in rows}


def speedup_against(rows: list[dict], mine: list[dict], dtype: str, decoder: str, seed: int) -> dict:
    """Pooled tokens/s of `mine` over those of (dtype, decoder) on the same prompts, and the mean of
    per-prompt speed ratios with its interval."""
    base = _per_prompt([r for r in rows if r["dtype"] == dtype and r["decoder"] == decoder])
    pairs = [(r, base[k]) for k, r in _per_prompt(mine).items()]
    ratios = [(r["tokens"] / r["seconds"]) / (b["tokens"] / b["seconds"]) for r, b in pairs]
    pooled = ratio_of_rates_interval(*zip(*[(r["tokens"], r["seconds"], b["tokens"], b["seconds"]) for r, b in pairs]),
                                     seed=seed)
    return {"speedup": round(pooled.mean, 4), "speedup_ci_low": round(pooled.low, 4),
            "speedup_ci_high": round(pooled.high, 4), "n_prompts": pooled.n,
            **{k: round(v, 4) for k, v in mean_interval(ratios, seed).as_dict("per_prompt_speedup").items()}}


def summarise(rows: list[dict], dtype: str, name: str, seed: int) -> dict:
    """One decoder in one dtype: tokens/s, speedups against `generate` in bfloat16 and in its own
    dtype, acceptance, draft and verify time, identity with `generate`."""
    mine = [r for r in rows if r["dtype"] == dtype and r["decoder"] == name]
    drafted, steps = sum(r["drafted"] for r in mine), sum(r["steps"] for r in mine)
    out = {"tok_per_s": round(_rate(mine), 2)}
    if any(r["dtype"] == REFERENCE_DTYPE for r in rows):
        out["vs_generate_bf16"] = speedup_against(rows, mine, REFERENCE_DTYPE, "generate", seed)
    lookup_dtype = next((r["dtype"] for r in rows if r["decoder"] == LOOKUP), None)  # the system's dtype
    if lookup_dtype is not None and name != LOOKUP:
        out["vs_prompt_lookup"] = speedup_against(rows, mine, lookup_dtype, LOOKUP, seed)
    out["vs_generate_same_dtype"] = speedup_against(rows, mine, dtype, "generate", seed)
    out["identical_to_generate"] = round(float(np.mean([r["identical"] for r in mine])), 4)
    if name not in BASELINES:
        rates = [r["accepted"] / r["drafted"] for r in mine if r["drafted"]]
        if len(rates) > 1:
            out.update({k: round(v, 4) for k, v in mean_interval(rates, seed).as_dict("per_prompt_acceptance").items()})
        out.update(acceptance_rate=round(sum(r["accepted"] for r in mine) / drafted, 4) if drafted else 0.0,
                   mean_accepted=round(sum(r["accepted"] for r in mine) / steps, 4) if steps else 0.0,
                   drafted_per_step=round(drafted / steps, 4) if steps else 0.0,
                   draft_ms_per_token=round(1000 * sum(r["draft_seconds"] for r in mine) / drafted, 3) if drafted else 0.0,
                   verify_ms_per_step=round(1000 * sum(r["verify_seconds"] for r in mine) / steps, 3) if steps else 0.0)
    return out


def cost_model(summary: dict, verify_ms: dict[int, float]) -> dict:
    """Why a drafter pays or not: c = draft cost per token as a fraction of a plain step, alpha =
    acceptance rate, g = tokens drafted per step. Leviathan et al.'s expected tokens per step
    (1 - alpha^(g+1)) / (1 - alpha) over the cost g*c + 1, and the same with the measured tokens per
    step and the measured cost of verifying g + 1 tokens; what c would break even at this acceptance,
    and what acceptance at this c."""
    plain = verify_ms[1]
    g, alpha = summary["drafted_per_step"], summary["acceptance_rate"]
    if g == 0:
        return {"c": 0.0, "alpha": 0.0, "drafted_per_step": 0.0, "predicted_leviathan": 1.0, "predicted_measured_cost": 1.0}
    c = summary["draft_ms_per_token"] / plain
    verify = np.interp(g + 1, list(verify_ms), list(verify_ms.values())) / plain

    def expected(a: float) -> float:
        return g + 1 if a >= 1 else (1 - a ** (g + 1)) / (1 - a)

    tokens = summary["mean_accepted"] + 1
    out = {"c": round(c, 4), "alpha": alpha, "drafted_per_step": g, "verify_cost": round(float(verify), 4),
           "predicted_leviathan": round(expected(alpha) / (g * c + 1), 4),
           "predicted_measured_cost": round(tokens / (g * c + verify), 4),
           "c_to_break_even": round(max(0.0, (tokens - verify) / g), 4)}
    need = lambda a: expected(a) / (g * c + 1) - 1  # noqa: E731 - the break-even condition in alpha
    out["alpha_to_break_even"] = round(brentq(need, 0.0, 1.0 - 1e-9), 4) if need(0.0) < 0 < need(1.0 - 1e-9) else None
    return out


def choose_drafters(calibration: list[dict], dtype: str, min_speedup: float,
                    drafters: tuple[str, ...] = CHOICES) -> dict[str, str]:
    """Per category, the one of `drafters` with the most tokens/s on the calibration prompts in `dtype`
    if it beats the loop with no draft by more than `min_speedup`, else none."""
    chosen = {}
    for category in sorted({r["category"] for r in calibration}):
        rows = [r for r in calibration if r["category"] == category and r["dtype"] == dtype]
        rate = {name: _rate([r for r in rows if r["decoder"] == name]) for name in ("none", *drafters)}
        best = max(drafters, key=lambda n: rate[n])
        chosen[category] = best if rate[best] / rate["none"] > min_speedup else "none"
    return chosen


def exactness(rows: list[dict], bound: dict[str, float]) -> dict:
    """Per dtype: the share of the loop's and of transformers' assisted generations identical to
    `generate`; the divergences, each with the reference's margin at the first differing token,
    and whether every one lies below that dtype's rounding bound."""
    out = {}
    for dtype in sorted({r["dtype"] for r in rows}):
        mine = [r for r in rows if r["dtype"] == dtype and r["decoder"] != "generate"]
        diverged = [r for r in mine if not r["identical"]]
        margins = [r["reference_margin"] for r in diverged]
        out[dtype] = {"identical_share": round(float(np.mean([r["identical"] for r in mine])), 4),
                      "n_generations": len(mine), "n_divergent": len(diverged),
                      "rounding_delta": round(bound[dtype] / 2, 5), "bound": round(bound[dtype], 5),
                      "divergent_margins": sorted(round(m, 4) for m in margins if m == m),
                      "all_divergences_below_bound": bool(all(m == m and m < bound[dtype] for m in margins))}
    return out


def best_lookup(rows: list[dict], dtype: str) -> tuple[int, dict[str, float]]:
    """The `prompt_lookup_num_tokens` of the sweep with the most pooled tokens/s, and every setting's rate."""
    rates = {r["decoder"]: None for r in rows if r["decoder"].startswith(LOOKUP + "@") and r["dtype"] == dtype}
    for name in rates:
        rates[name] = round(_rate([r for r in rows if r["decoder"] == name and r["dtype"] == dtype]), 2)
    best = max(rates, key=lambda n: (rates[n], -int(n.split("@")[1])))
    return int(best.split("@")[1]), {n.split("@")[1]: v for n, v in rates.items()}


def measure(decoder, tokenizer, models: dict, calibration: dict[str, list[str]], test: dict[str, dict[str, list[str]]],
            settings: dict, system_dtype: str, seed: int, progress: bool = True, datastore=None):
    """(per-category results, overall metrics, per-generation rows, one example generation).
    `models` maps dtype names to the model loaded in that dtype; the chosen system runs in `system_dtype`;
    `test` holds the test prompts per split; `datastore` is what the suffix drafter searches."""
    gamma = settings["gamma"]
    limit = context_length(decoder.model) - settings["max_new_tokens"] - gamma - 1
    warm = chat_ids(tokenizer, "Hello", limit)
    sweep = [f"{LOOKUP}@{n}" for n in settings["lookup_sweep"]]
    drafters = tuple(settings.get("drafters", CHOICES))
    pairs = variants(list(models), system_dtype, drafters, settings.get("ablations", False))
    settings = {**settings, "lookup": settings["lookup_sweep"][0]}
    for dtype, name in pairs + [(system_dtype, n) for n in sweep]:  # warm-up of every code path
        run_decoder(decoder, models[dtype], warm, "Hello", tokenizer, name, {**settings, "max_new_tokens": 4}, {},
                    datastore)
    choice = [(system_dtype, name) for name in ("none", *drafters, *sweep)]  # all the choices need
    rows = generate_all(decoder, tokenizer, models, calibration, "calibration", choice, settings, seed, progress=progress,
                        datastore=datastore)
    chosen = choose_drafters(rows, system_dtype, settings["min_speedup"], drafters)
    settings["lookup"], lookup_rates = best_lookup(rows, system_dtype)
    test_rows = []
    for k, (split, prompts) in enumerate(test.items()):
        test_rows += generate_all(decoder, tokenizer, models, prompts, split, pairs, settings, seed + 1 + k, chosen,
                                  progress, datastore)
    names = pairs
    first = next(r for r in test_rows if r["decoder"] == "generate")
    first_prompt = test[first["split"]][first["category"]][0]
    ids = {d: chat_ids(tokenizer, first_prompt, limit) for d in models}
    verify_ms = {d: verify_cost(m, ids[d], gamma + 1) for d, m in models.items()}
    bound = {dtype: 2 * max(r["rounding_delta"] for r in test_rows if r["dtype"] == dtype and r["decoder"] == "generate")
             for dtype in models}  # the rounding of k-token forwards, over every test prompt's reference
    drafters, by_split = {}, {}
    for dtype, name in names:
        summary = summarise(test_rows, dtype, name, seed)
        if name not in BASELINES and name != SYSTEM:
            summary["cost_model"] = cost_model(summary, verify_ms[dtype])
        drafters.setdefault(dtype, {})[name] = summary
        if dtype == system_dtype:
            for split in test:
                by_split.setdefault(split, {})[name] = summarise([r for r in test_rows if r["split"] == split], dtype,
                                                                 name, seed)
    reference = (REFERENCE_DTYPE if REFERENCE_DTYPE in models else system_dtype, "generate")
    per_category = {}
    for category in sorted({c for prompts in test.values() for c in prompts}):
        mine = [r for r in test_rows if r["category"] == category]
        base = _rate([r for r in mine if (r["dtype"], r["decoder"]) == reference])
        per_category[category] = {"drafter": chosen.get(category, "none"),
                                  "n_prompts": len({(r["split"], r["prompt"]) for r in mine}),
                                  "speedup_vs": "/".join(reference),
                                  **{f"{d}/{n}": round(_rate([r for r in mine if (r["dtype"], r["decoder"]) == (d, n)]) / base, 4)
                                     for d, n in names}}
    overall = {"system_dtype": system_dtype, "chosen": chosen, "system": drafters[system_dtype][SYSTEM],
               "exactness": exactness(test_rows, bound),
               "n_calibration_prompts": sum(len(p) for p in calibration.values()),
               "n_test_prompts": sum(len(p) for split in test.values() for p in split.values()),
               "test_splits": {split: sum(len(p) for p in prompts.values()) for split, prompts in test.items()},
               "lookup_sweep_tok_per_s": lookup_rates, "decoders": drafters, "by_split": by_split,
               "verify_ms_by_tokens": verify_ms, **settings}
    example = {"category": first["category"], "prompt": first_prompt, "reply": first["text"]}
    for r in rows + test_rows:
        r.pop("text", None)
        r.pop("token_ids", None)
    return per_category, overall, rows + test_rows, example
