"""The quality-vs-speed frontier of every level of adaptivity, under one protocol: the prompt's
prefill runs every layer (the router's layers are its first layers, so routing costs only the map
lookup), then each generated token skips what its method chooses. The methods are those
`frontier.methods` names (`ais.methods`), each at every skipped count n of `frontier.fractions`
(a method with a size of its own, such as the original prototype's plans, once at that size; the
per-prompt oracle at `frontier.oracle_fractions` on the first prompts of each category; a sub-layer
plan at the measured cost of n layers). The ladder, least to most input-dependent: global, category,
neighbours, prompt, dynamic; its ceiling the per-prompt oracle.

Quality: teacher-forced on the full model's own greedy continuation, per prompt, top-1 agreement and
KL against the full model computed by the same protocol; `stepwise_full` is the full model scored one
token at a time as the per-token mode runs (in bfloat16 its rounding differs from the one-forward
continuation: the floor below which a difference is rounding). Every plan's measured cost (in layers,
from the engine's block clock) is reported beside its nominal count. Speed: generation tokens/s of
whole requests (prefill, routing, gate all inside the clock) at each batch size, of the methods that
can save compute (not the controls and ceilings), against the full model's greedy loop on the same
prompts, interleaved."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ais.model.plan import NEVER
from ais.decoding.greedy import decode, prefill
from ais.device import WARMUP_TOKENS, iqr, speedup, summary, time_interleaved
from ais.evaluation.calibration import calibrated
from ais.evaluation.quality import make_reference, score_conditions, score_gates
from ais.evaluation.references import frontier_chunks
from ais.evaluation.statistics import mean_interval, paired_difference
from ais.model.engine import LayerRows
from ais.model.plan import NO_SKIP
from ais.model.prompts import context_length, encode_prompts

FLOOR, PROMPT_ORACLE, OOS = "stepwise_full", "prompt_oracle", "prompt_oracle_oos"
# the adaptivity ladder, least to most input-dependent (the per-prompt oracle is its ceiling)
LADDER = ("global", "category", "neighbours", "prompt", "dynamic")
COMPARED = ("global", "category")  # each level's paired difference is reported against these, at the same count
# (higher, lower, positions): the late half for the out-of-sample ceiling, which was searched on the early one
EXTRA_PAIRS = ((PROMPT_ORACLE, "prompt", ""), ("neighbours", "category_scores", ""), ("category_scores", "category", ""),
               ("plan_map", "global", ""), ("plan_map", "category", ""), ("plan_map_learned", "global", ""),
               (OOS, "global", "_late"),
               (PROMPT_ORACLE, OOS, "_late"), ("global", "category", "_late"))


def plan_cost(plan, costs: dict[str, float]) -> float:
    """What a plan saves per decode step, in units of one mean layer, from the measured block costs."""
    layer = costs["layer"]
    saved = sum(costs[f"attention@{i}"] + costs[f"mlp@{i}"] for i in plan.hard)
    saved += sum(costs[f"attention@{i}"] for i in plan.attention) + sum(costs[f"mlp@{i}"] for i in plan.mlp)
    return saved / layer


def measure_quality(decoder, tokenizer, prompts_by_split: dict[str, dict[str, list[str]]], methods: dict,
                    counts: list[int], n_continuation: int, costs: dict[str, float], oracle_counts: list[int] = (),
                    oracle_per_category: int = 1, batch_size: int = 18, progress: bool = True,
                    references=None) -> list[dict]:
    """Per-prompt rows {split, category, prompt, method, n_skipped, layers_skipped, cost, top1, top5, kl}:
    `n_skipped` is the point's nominal count, `layers_skipped` what the prompt's decoded tokens skipped
    (whole layers; a sub-layer block counts half), `cost` the saving in measured layers. Each split's
    prompts are scored `batch_size` at a time, categories mixed, every row under its own plan in one pass."""
    engine, setup = decoder.engine, decoder.setup
    rows = []
    for split, by_category in prompts_by_split.items():
        chunks = frontier_chunks(by_category, batch_size)
        for k, chunk in enumerate(tqdm(chunks, desc=f"frontier {split}", unit="batch", disable=not progress)):
            prompts, truth = [p for *_, p in chunk], [c for c, *_ in chunk]
            routes = decoder.route_prompts(tokenizer, prompts, mode="full", scores=True)  # + each prompt's own scores
            if references is not None:  # computed once by the reference stage, in these very batches
                ref = references.get(f"frontier/{split}/{k}", prompts, "decode")
            else:
                ref = make_reference(engine, tokenizer, prompts, n_continuation, "decode")
            everyone = list(range(len(chunk)))
            requests = decoder.requests(routes, prompts, truth, [ref.rows([j]) for j in everyone])
            points, shared, subsets = {}, {}, {}
            gates = {(FLOOR, 0): NEVER}  # the floor: the full model one token at a time, as the gated steps run
            for name, method in methods.items():
                if method.per_token:
                    gates.update({(name, n): method.gate(setup.budget(n)) for n in counts if n > 0})
                    continue
                if getattr(method, "subset", False):
                    members = [j for j, (_, i, _) in enumerate(chunk) if i < oracle_per_category]  # the search is dear
                    budgets = [n for n in oracle_counts if n > 0]
                elif getattr(method, "own_budget", False):
                    members, budgets = everyone, [None]
                else:
                    members, budgets = everyone, [n for n in counts if n > 0]
                for n in budgets:
                    plans = method.plans([requests[j] for j in members], setup.budget(n))
                    key = n if n is not None else int(round(np.mean([len(p.layers) for p in plans])))
                    (shared if members == everyone else subsets.setdefault(tuple(members), {}))[(name, key)] = plans
            # every static plan of the chunk in one pass: the prompt's prefill and the layers below the lowest
            # skipped layer run once, then each prompt fans out into one row per plan
            for members, conditions in [(everyone, shared)] + [(list(m), c) for m, c in subsets.items()]:
                if not conditions or not members:
                    continue
                sub = ref if len(members) == len(chunk) else ref.rows(members)
                scored = score_conditions(engine, sub, conditions, "decode", split=True)
                for key, plans in conditions.items():
                    points[key] = (scored[key], [p.blocks / 2 for p in plans],
                                   [plan_cost(p, costs) for p in plans] if costs else None, members)
            for key, (scores, depth) in score_gates(engine, ref, gates, split=True).items():  # every gate in one pass
                points[key] = (scores, _skipped(engine.n_layers, depth, ref.scored), None, everyone)
            for (name, n), (scores, skipped, cost, members) in points.items():
                scores = {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in scores.items()}
                for at, j in enumerate(members):
                    category, i, _ = chunk[j]
                    row = {"split": split, "category": category, "prompt": i, "method": name, "n_skipped": n,
                           "layers_skipped": round(float(skipped[at]), 4)}
                    if cost is not None:
                        row["cost"] = round(float(cost[at]), 4)
                    row.update({k: round(float(v[at]), 6) for k, v in scores.items()})
                    rows.append(row)
    return rows


def _skipped(n_layers: int, depth: torch.Tensor, scored: torch.Tensor) -> list[float]:
    """Each row's mean skipped layers over its decoded, scored tokens (the first token comes from the
    full prefill and is not counted)."""
    decoded = scored[:, 1:] if scored.shape[1] > 1 else scored
    skipped = ((n_layers - depth[:, 1:] if depth.shape[1] > 1 else n_layers - depth).float() * decoded).sum(1)
    return (skipped / decoded.sum(1).clamp_min(1)).cpu().tolist()


def _rotating(prompts: list[str], size: int, repeat: int) -> list[str]:
    return [prompts[(repeat * size + j) % len(prompts)] for j in range(size)]


def request_calls(decoder, methods: dict, counts: list[int]) -> dict[tuple[str, int], callable]:
    """{(method, n): a function (batch, tokens) generating that many greedy tokens (no early stop)} for
    every timed point: the methods that can save compute (not controls or ceilings), each as a whole
    request under the frontier's protocol (the prefill runs every layer; routing from its first layers,
    the map lookup, the prompt's own layer scores and the gate inside the call)."""
    engine = decoder.engine

    def full(batch, tokens):
        flight, logits = prefill(engine, batch)
        return decode(flight, logits.argmax(-1), tokens)[0]

    calls = {("full", 0): full}
    for name, method in methods.items():
        if getattr(method, "control", False) or getattr(method, "own_budget", False):
            continue
        routed = decoder.with_plan(name)
        routed.method = method  # the calibrated instance
        for n in counts:
            if n > 0:
                calls[(name, n)] = (lambda batch, tokens, r=routed, k=n:
                                    r.generate(batch, tokens, layers=k, full_prefill=True)[0])
    return calls


def measure_speed(decoder, tokenizer, prompts: list[str], calls: dict[tuple, callable], batch_sizes: list[int],
                  new_tokens: int, warmup: int, repeats: int, seed: int, target_iqr: float | None = None,
                  min_repeats: int = 2) -> dict[tuple, dict]:
    """{(method, n, batch size): median seconds, IQR, tokens/s, the paired speedup over the full model
    and the repeats it took}: in repeat r every timed call gets the same batch (the next `size` prompts
    of `prompts`), in a seeded random order, beside the full model; the first `warmup` repeats are not
    counted (they generate `WARMUP_TOKENS`: every code path, less work). With `target_iqr`, a point
    stops being timed once it has `min_repeats` repeats and the interquartile range of its per-repeat
    speedups is at most that (repeats set by the interval they must reach; each point on its own, where
    `time_interleaved` stops all calls together); at most `repeats` repeats."""
    model = decoder.model
    out = {}
    full_key = ("full", 0)
    for size in batch_sizes:
        times = {key: [] for key in calls}
        active = set(calls)
        for r in range(warmup + repeats):
            batch = encode_prompts(tokenizer, _rotating(prompts, size, r), model.device, context_length(model) - new_tokens)
            tokens = min(WARMUP_TOKENS, new_tokens) if r < warmup else new_tokens
            timed = {key: (lambda fn=calls[key]: fn(batch, tokens)) for key in calls if key in active or key == full_key}
            one = time_interleaved(timed, model.device, 0, 1, seed + r)
            if r < warmup:
                continue
            for key, t in one.items():
                times[key].append(float(t[0]))
            if target_iqr is not None:
                for key in list(active - {full_key}):
                    n = len(times[key])
                    if n >= min_repeats:
                        if iqr(np.array(times[full_key][:n]) / np.array(times[key])) <= target_iqr:
                            active.discard(key)
                if active <= {full_key}:
                    break
        full = np.array(times[full_key])
        for key, t in times.items():
            stats = summary(np.array(t))
            paired = full[:len(t)]  # the repeats this point was timed in, paired with the full model's
            out[(*key, size)] = {**stats, **speedup(paired, np.array(t)), "repeats": len(t),
                                 "tok_per_s": round(size * new_tokens / stats["median_s"], 2)}
    return out


def summarise(rows: list[dict], speed: dict[tuple, dict], mode: str, n_layers: int, seed: int,
              per_token: set[str] = frozenset()) -> list[dict]:
    """One row per split, method and count: quality means with intervals, paired differences from
    the global and category plans at the same count, the layers actually skipped, the measured cost,
    and the measured generation speed of that point at each batch size."""
    out = []
    keys = sorted({(r["split"], r["method"], r["n_skipped"]) for r in rows})
    by_key = {k: [r for r in rows if (r["split"], r["method"], r["n_skipped"]) == k] for k in keys}
    sizes = sorted({k[2] for k in speed})
    for split, method, n in keys:
        members = by_key[(split, method, n)]
        top1 = mean_interval([r["top1"] for r in members], seed)
        skipped = float(np.mean([r["layers_skipped"] for r in members]))
        token = method in per_token or method == FLOOR
        row = {"split": split, "method": method, "mode": "per-token" if token else mode,
               "n_skipped": n, "layers_skipped": round(skipped, 3), "fraction": round(n / n_layers, 4),
               "n_prompts": len(members), "top1": round(top1.mean, 4), "top1_ci_low": round(top1.low, 4),
               "top1_ci_high": round(top1.high, 4), "top5": round(float(np.mean([r["top5"] for r in members])), 4),
               "kl": round(float(np.mean([r["kl"] for r in members])), 4)}
        if all("cost" in r for r in members):
            row["cost"] = round(float(np.mean([r["cost"] for r in members])), 3)
        late = [r["top1_late"] for r in members if r.get("top1_late") == r.get("top1_late") and "top1_late" in r]
        if late:  # the second half of the positions (where the out-of-sample ceiling is scored)
            row["top1_late"] = round(float(np.mean(late)), 4)
        for other in COMPARED:
            if other != method and (split, other, n) in by_key and n > 0:
                theirs = {(r["category"], r["prompt"]): r["top1"] for r in by_key[(split, other, n)]}
                if all((r["category"], r["prompt"]) in theirs for r in members):
                    diff = paired_difference([r["top1"] for r in members],
                                             [theirs[(r["category"], r["prompt"])] for r in members], seed)
                    row.update({k: round(v, 4) for k, v in diff.as_dict(f"minus_{other}_top1").items()})
        for size in sizes:
            timed = speed.get((method, n, size)) or (speed.get(("full", 0, size)) if n == 0 and method != FLOOR else None)
            if timed is not None:
                row.update({f"b{size}_tok_per_s": timed["tok_per_s"], f"b{size}_speedup": round(timed["speedup"], 4),
                            f"b{size}_repeats": timed.get("repeats"),
                            f"b{size}_speedup_q1": round(timed["speedup_q1"], 4),
                            f"b{size}_speedup_q3": round(timed["speedup_q3"], 4)})
        saved = row.get("cost", skipped) if mode == "hard" or token else 0.0
        row["ideal_decode_speedup"] = round(n_layers / (n_layers - saved), 4) if n_layers > saved else None
        out.append(row)
    return out


def ladder_pairs(methods: set[str]) -> list[tuple[str, str, str]]:
    """(higher, lower, positions suffix) for each adjacent pair of the measured ladder levels, then the
    extra pairs (without map.prompt_scores there is no neighbours level: prompt is compared with the
    category)."""
    levels = [m for m in LADDER if m in methods]
    return [(a, b, "") for a, b in zip(levels[1:], levels[:-1])] + [p for p in EXTRA_PAIRS if set(p[:2]) <= methods]


def ladder_gaps(rows: list[dict], seed: int) -> list[dict]:
    """Per split and count, the paired top-1 (and KL) difference between each pair of `ladder_pairs`
    measured on the same prompts, with its 95% interval."""
    index = {(r["split"], r["method"], r["n_skipped"], r["category"], r["prompt"]): r for r in rows}
    out = []
    for split in sorted({r["split"] for r in rows}):
        for n in sorted({r["n_skipped"] for r in rows if r["n_skipped"] > 0}):
            for higher, lower, part in ladder_pairs({r["method"] for r in rows if r["n_skipped"] == n}):
                keys = [(r["category"], r["prompt"]) for r in rows
                        if (r["split"], r["method"], r["n_skipped"]) == (split, higher, n)]
                pairs = [(index[(split, higher, n, *k)], index.get((split, lower, n, *k))) for k in keys]
                if not pairs or any(b is None for _, b in pairs):
                    continue
                if part:  # prompts with no scored position in that half have nothing to compare
                    pairs = [(a, b) for a, b in pairs if a.get("top1" + part) == a.get("top1" + part)]
                    if not pairs:
                        continue
                row = {"split": split, "n_skipped": n, "higher": higher, "lower": lower,
                       "positions": "late half" if part else "all", "n_prompts": len(pairs)}
                for metric in ("top1", "kl"):
                    diff = paired_difference([a[metric + part] for a, _ in pairs], [b[metric + part] for _, b in pairs],
                                             seed)
                    row.update({f"{metric}_difference{k[len(metric):]}": round(v, 4)
                                for k, v in diff.as_dict(metric).items() if not k.endswith("_n")})
                out.append(row)
    return out


@torch.inference_mode()
def dynamic_overheads(engine, tokenizer, prompt: str, layer_index: int, warmup: int = 3, repeats: int = 30,
                      seed: int = 0) -> dict:
    """What the per-token mode adds per token and layer, as a fraction of running that layer on one new
    position after `prompt` (batch 1, cached): filling a skipped layer's keys and values, and the gate
    (the cosine similarity of the layer's input and output). Medians of interleaved repeats; the cache
    is cut back to the prompt after every call."""
    batch = encode_prompts(tokenizer, [prompt], engine.device)
    flight, logits = prefill(engine, batch)
    length = flight.length
    x, ctx = flight.feed(logits.argmax(-1)[:, None])
    run_rows = LayerRows(None, None, None, {}, None, True, False, None)
    fill_rows = LayerRows(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                          torch.zeros(1, dtype=torch.long), {}, None, False, False, torch.zeros(0, dtype=torch.long))
    out = engine.layer(layer_index, x, ctx, run_rows)
    flight.cache.truncate(length)
    precision = torch.promote_types(x.dtype, torch.float32)

    def cut(rows):
        def call():
            engine.layer(layer_index, x, ctx, rows)
            flight.cache.truncate(length)
        return call

    seconds = time_interleaved({
        "layer": cut(run_rows),
        "fill_kv": cut(fill_rows),
        "gate": lambda: bool(torch.cosine_similarity(x[:, -1].to(precision), out[:, -1].to(precision), dim=-1)[0] >= 0.5),
    }, engine.device, warmup, repeats, seed)
    median = {name: float(np.median(s)) for name, s in seconds.items()}
    return {"layer_ms": round(1000 * median["layer"], 4), "layer_index": layer_index,
            "fill_kv_ms": round(1000 * median["fill_kv"], 4), "gate_ms": round(1000 * median["gate"], 4),
            "fill_kv_fraction": round(median["fill_kv"] / median["layer"], 4),
            "gate_fraction": round(median["gate"] / median["layer"], 4)}


def frontier_methods(decoder, tokenizer, names: list[str], calibration_prompts, n_continuation: int,
                     costs: dict[str, float] | None = None, references=None) -> dict:
    """The named methods, calibrated (decode-time) on the calibration prompts where they ask, costed by `costs`."""
    return calibrated(decoder, tokenizer, names, calibration_prompts, n_continuation, "decode", costs, references)


__all__ = ["COMPARED", "FLOOR", "LADDER", "NO_SKIP", "PROMPT_ORACLE", "dynamic_overheads", "frontier_methods",
           "ladder_gaps", "ladder_pairs", "measure_quality", "measure_speed", "plan_cost", "request_calls", "summarise"]
