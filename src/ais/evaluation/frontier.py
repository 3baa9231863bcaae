"""The quality-vs-speed frontier of every level of adaptivity, under one protocol: the prompt's
prefill runs every layer (the router's layers are its first layers, so routing costs only the map
lookup), then each generated token skips the layers its level chooses:
  global  — one plan for every prompt (the pooled importance), n layers;
  routed  — the routed category's plan, n layers; oracle — the true category's plan (no router);
  random  — n layers drawn at random (a control);
  original_fixed_half / original_best_group — the original prototype's plans;
  dynamic — per token, CALM's hidden-state saturation gate (`ais.decoding.dynamic`): an exited token
            skips the later of the 2n least important layers past the pivot (pooled importance); its
            threshold set on calibration prompts so that decoded tokens skip n layers on average
            (equal mean depth by construction there; the depth reached on held-out prompts is measured);
  dynamic_calm — the same gate exiting from every later layer (CALM's own early exit).
Quality: teacher-forced on the full model's own greedy continuation, per prompt, top-1 agreement and
KL against the full model computed by the same protocol; `stepwise_full` is the full model scored one
token at a time as the dynamic mode runs (in bfloat16 its rounding differs from the one-forward
continuation: the floor below which a difference is rounding). Speed: generation tokens/s of whole
requests (prefill, routing, gate all inside the clock) at batch 1 and 4, against the full model's
greedy loop on the same prompts, interleaved."""
from __future__ import annotations

import copy

import numpy as np
import torch
from tqdm import tqdm
from transformers import DynamicCache

from ais.decoding.dynamic import NEVER, DepthGate, dynamic_generate, fill_kv, forced_logits
from ais.decoding.greedy import continue_with_plans, generate_after_full_prefill, plain_generate
from ais.decoding.routed import RoutedDecoder
from ais.decoding.speculative import prefill, recording_states, truncate_cache
from ais.evaluation.importance import layer_groups
from ais.evaluation.quality import compare_logprobs, decode_logprobs, make_reference
from ais.evaluation.statistics import mean_interval, paired_difference
from ais.evaluation.timing import speedup, summary, time_interleaved
from ais.model.forward import layer_kwargs
from ais.model.gating import NO_SKIP, SkipPlan, decoder_layers, group_by_plan
from ais.model.prompts import context_length, encode_prompts
from ais.routing.plans import layers_from_scores, make_plan, random_layers

ROUTED, DYNAMIC, CALM, FLOOR = "routed", "dynamic", "dynamic_calm", "stepwise_full"
NEIGHBOURS, PROMPT, CATEGORY_SCORES, PROMPT_ORACLE = "neighbours", "prompt", "category_scores", "prompt_oracle"
# the adaptivity ladder, least to most input-dependent (the per-prompt oracle is its ceiling)
LADDER = ("global", ROUTED, NEIGHBOURS, PROMPT, DYNAMIC)
COMPARED = ("global", ROUTED)  # each level's paired difference is reported against these, at the same count


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


def category_scores_plan(decoder: RoutedDecoder, category: str, fraction: float) -> SkipPlan:
    """The control between category and neighbours: the mean of the category's map entries' own layer
    scores (the measure the neighbours and prompt plans use, the category label of the category plan)."""
    scores = decoder.topo.neighbour_scores(np.flatnonzero(decoder.topo.labels == decoder.topo.categories.index(category)))
    return make_plan(layers_from_scores(scores, decoder.pivot, decoder.settings, fraction), decoder.settings.mode,
                     decoder.settings.alpha)


def plans_for_count(decoder: RoutedDecoder, truth: list[str], routes: list, n: int,
                    rng: np.random.Generator) -> dict[tuple[str, int], list[SkipPlan]]:
    """Every static method's plan per prompt at `n` skipped layers; `routes` carry each prompt's
    routed category, nearest map entries and own layer scores."""
    settings, n_layers = decoder.settings, decoder.model.config.num_hidden_layers
    mode, alpha, fraction = settings.mode, settings.alpha, n / n_layers
    plans = {
        (ROUTED, n): [decoder.plan_for(r.category, fraction) for r in routes],
        ("oracle", n): [decoder.plan_for(c, fraction) for c in truth],
        ("global", n): [make_plan(decoder.global_layers(n), mode, alpha)] * len(truth),
        ("random", n): [make_plan(random_layers(n_layers, decoder.pivot, n, rng), mode, alpha) for _ in truth],
    }
    if decoder.topo.prompt_scores is not None:
        plans[(NEIGHBOURS, n)] = [decoder.plan_of(r.category, r.neighbours, fraction=fraction, kind="neighbours")
                                  for r in routes]
        plans[(CATEGORY_SCORES, n)] = [category_scores_plan(decoder, r.category, fraction) for r in routes]
    if all(r.scores is not None for r in routes):
        plans[(PROMPT, n)] = [decoder.plan_of(r.category, scores=r.scores, fraction=fraction, kind="prompt")
                              for r in routes]
    return plans


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


def dynamic_candidates(decoder: RoutedDecoder, n: int) -> list[int]:
    """The layers an exited token may skip at the frontier's point n: the 2n least important layers
    past the pivot by the pooled importance (all of them where fewer remain)."""
    return decoder.global_layers(min(2 * n, decoder.model.config.num_hidden_layers))


@torch.inference_mode()
def calibrate_gates(model, tokenizer, prompts: list[str], counts: list[int], n_continuation: int, min_layer: int,
                    candidates: dict[int, list[int] | None]) -> dict[int, DepthGate]:
    """Per layer count n > 0, the gate (with `candidates[n]`) whose threshold makes the decoded tokens
    of `prompts` (calibration prompts, never the evaluated ones) skip n layers on average, read off
    one full forward: a token exits after the first layer i >= min_layer - 1 whose input and output
    have cosine similarity >= the threshold and then skips the candidates past i. (Exits change later
    tokens' caches; the depth reached on the evaluated prompts is measured there.)"""
    ref = make_reference(model, tokenizer, prompts, n_continuation)
    with recording_states(model) as states:
        model(**ref.batch, use_cache=False)
    n_layers = len(states) - 1
    columns = list(range(ref.columns.start + 1, ref.columns.stop)) or [ref.columns.start]
    scored = ref.scored[:, -len(columns):].bool()
    cos = torch.stack([torch.cosine_similarity(states[i][:, columns].float(), states[i + 1][:, columns].float(), dim=-1)
                       for i in range(n_layers)], -1)[scored]  # tokens x layers
    may_exit = (torch.arange(n_layers) + 1 >= min_layer) & (torch.arange(n_layers) + 1 < n_layers)
    gates = {}
    for n in counts:
        if n == 0:
            continue
        gate = DepthGate(1.0, min_layer, candidates.get(n))
        skippable = torch.tensor([gate.skippable(i) for i in range(n_layers)])
        after = skippable.flip(0).cumsum(0).flip(0) - skippable.long()  # candidates past layer i

        def mean_skipped(threshold: float) -> float:
            fires = (cos >= threshold) & may_exit
            exit_after = torch.where(fires.any(-1), fires.float().argmax(-1), torch.full((len(cos),), n_layers - 1))
            return float(after[exit_after].float().mean())

        low, high = 0.0, 1.0 + 1e-6  # mean_skipped(low) >= n > mean_skipped(high) = 0
        if mean_skipped(low) < n:
            raise ValueError(f"the dynamic gate cannot skip {n} layers on average with candidates {gate.candidates}")
        for _ in range(40):
            middle = (low + high) / 2
            low, high = (middle, high) if mean_skipped(middle) >= n else (low, middle)
        gates[n] = DepthGate(round(low, 6), min_layer, candidates.get(n))
    return gates


@torch.inference_mode()
def _with_row_skips(model, ref_row, cache, skip: torch.Tensor, mode: str, alpha: float) -> torch.Tensor:
    """Log-probabilities (R x columns-1 x vocab) of one reference row's continuation after its filled
    prompt cache, once per row of `skip` (R x L, bool: that candidate's plan). A skipped layer's output
    is its input (hard) or the blend (soft); the layer's keys and values for a hard-skipped position are
    written but never read, since every later position of that candidate skips the layer too."""
    start, stop = ref_row.columns.start, ref_row.columns.stop
    rows = skip.shape[0]
    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(rows)
    tokens = ref_row.batch["input_ids"][:, start + 1:stop].expand(rows, -1)
    hidden = model.model.embed_tokens(tokens)
    ctx = layer_kwargs(model, hidden, cache, ref_row.batch["attention_mask"][:, :stop].expand(rows, -1))
    for i, layer in enumerate(decoder_layers(model)):
        out = layer(hidden, **ctx)
        skipped = hidden if mode == "hard" else alpha * out + (1 - alpha) * hidden
        hidden = torch.where(skip[:, i, None, None], skipped, out)
    return torch.log_softmax(model.lm_head(model.model.norm(hidden)).float(), -1)


@torch.inference_mode()
def prompt_oracle_plans(model, ref, full: torch.Tensor, allowed: list[int], counts, mode: str = "hard",
                        alpha: float = 0.7) -> dict[int, list[SkipPlan]]:
    """The ceiling of any input-dependent plan: per prompt, the plan found by a greedy search on its own
    reference continuation (decode-time, as scored): remove, one at a time, the allowed layer whose
    removal (with those removed before) keeps the most top-1 agreement with the full model (ties: the
    least KL). In-sample by design. {n: one plan per row} for each n in `counts`."""
    counts = sorted(n for n in counts if n > 0)
    out = {n: [] for n in counts}
    if not counts:
        return out
    n_layers = len(decoder_layers(model))
    for r in range(ref.batch["input_ids"].shape[0]):
        row = ref.rows([r])
        start, stop = row.columns.start, row.columns.stop
        cache = DynamicCache(config=model.config)
        model(**{k: v[:, :start + 1] for k, v in row.batch.items()}, past_key_values=cache, use_cache=True,
              logits_to_keep=1)
        target, weights = full[r, 1:], row.scored[0, 1:]
        removed: list[int] = []
        for step in range(1, counts[-1] + 1):
            candidates = [layer for layer in allowed if layer not in removed]
            if stop - start <= 1 or not weights.sum():  # nothing decoded to tell plans apart
                removed.append(candidates[0])
            else:
                skip = torch.zeros(len(candidates), n_layers, dtype=torch.bool, device=full.device)
                skip[:, removed] = True
                skip[torch.arange(len(candidates)), candidates] = True
                scores = compare_logprobs(target.expand(len(candidates), -1, -1),
                                          _with_row_skips(model, row, cache, skip, mode, alpha),
                                          weights.expand(len(candidates), -1))
                best = min(range(len(candidates)), key=lambda j: (-float(scores["top1"][j]), float(scores["kl"][j])))
                removed.append(candidates[best])
            if step in out:
                out[step].append(make_plan(sorted(removed), mode, alpha))
    return out


def _score_static(model, ref, full: torch.Tensor, plans: list[SkipPlan]) -> dict[str, np.ndarray]:
    """Per-row KL / top-1 / top-5 of decode-time plans (rows sharing a plan in one forward)."""
    out = {k: np.zeros(len(plans)) for k in ("kl", "top1", "top5")}
    for plan, members in group_by_plan(plans).items():
        sub = ref if len(members) == len(plans) else ref.rows(members)
        scores = compare_logprobs(full[members], decode_logprobs(model, sub, plan), sub.scored)
        for key in out:
            out[key][members] = scores[key].cpu().numpy()
    return out


def _score_dynamic(model, ref, full: torch.Tensor, gate: DepthGate) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-row scores of the dynamic mode and each row's mean skipped layers over its decoded,
    scored tokens (the first token comes from the full prefill and is not counted)."""
    logits, depth = forced_logits(model, ref.batch, ref.columns.start, ref.columns.stop, gate)
    scores = compare_logprobs(full, torch.log_softmax(logits, -1), ref.scored)
    n_layers = model.config.num_hidden_layers
    decoded = ref.scored[:, 1:] if ref.scored.shape[1] > 1 else ref.scored
    skipped = ((n_layers - depth[:, 1:] if depth.shape[1] > 1 else n_layers - depth).float() * decoded).sum(1)
    mean = (skipped / decoded.sum(1).clamp_min(1)).cpu().numpy()
    return {k: v.cpu().numpy() for k, v in scores.items()}, mean


def measure_quality(decoder: RoutedDecoder, tokenizer, prompts_by_split: dict[str, dict[str, list[str]]],
                    counts: list[int], n_continuation: int, seed: int, extra: dict[str, dict[str, list[int]]],
                    gates: dict[str, dict[int, DepthGate]], oracle_counts: list[int] = (), oracle_per_category: int = 1,
                    batch_size: int = 18, progress: bool = True) -> list[dict]:
    """Per-prompt rows {split, category, prompt, method, n_skipped, layers_skipped, top1, top5, kl}:
    `n_skipped` is the point's nominal count, `layers_skipped` what the prompt's decoded tokens skipped.
    Each split's prompts are scored `batch_size` at a time, categories mixed (rows sharing a plan run
    as one sub-batch; the per-token gate runs on the whole batch). The per-prompt oracle searches the
    first `oracle_per_category` prompts of each category only."""
    model = decoder.model
    rng = np.random.default_rng(seed)
    rows = []
    for split, by_category in prompts_by_split.items():
        items = [(c, i, p) for c in sorted(by_category) for i, p in enumerate(by_category[c])]
        chunks = [items[k:k + batch_size] for k in range(0, len(items), batch_size)]
        for chunk in tqdm(chunks, desc=f"frontier {split}", unit="batch", disable=not progress):
            prompts, truth = [p for *_, p in chunk], [c for c, *_ in chunk]
            routes = decoder.route_prompts(tokenizer, prompts, mode=decoder.settings.mode, kind="prompt")  # + own scores
            ref = make_reference(model, tokenizer, prompts, n_continuation)
            full = decode_logprobs(model, ref, NO_SKIP)  # the reference, computed by the same protocol
            plans = dict(extra_plans_for(decoder, [r.category for r in routes], extra))
            for n in counts:
                plans.update(plans_for_count(decoder, truth, routes, n, rng))
            everyone = list(range(len(chunk)))
            points = {key: (_score_static(model, ref, full, p), [len(plan.layers) for plan in p], everyone)
                      for key, p in plans.items()}
            searched = [j for j, (_, i, _) in enumerate(chunk) if i < oracle_per_category]  # the ceiling's search is dear
            if searched and oracle_counts:
                sub, sub_full = ref.rows(searched), full[searched]
                for n, found in prompt_oracle_plans(model, sub, sub_full, decoder.skippable_layers(), oracle_counts,
                                                    decoder.settings.mode, decoder.settings.alpha).items():
                    points[(PROMPT_ORACLE, n)] = (_score_static(model, sub, sub_full, found), [n] * len(found), searched)
            points[(FLOOR, 0)] = (*_score_dynamic(model, ref, full, NEVER), everyone)
            for method, by_count in gates.items():
                for n, gate in by_count.items():
                    points[(method, n)] = (*_score_dynamic(model, ref, full, gate), everyone)
            for (method, n), (scores, skipped, members) in points.items():
                for at, j in enumerate(members):
                    category, i, _ = chunk[j]
                    rows.append({"split": split, "category": category, "prompt": i, "method": method, "n_skipped": n,
                                 "layers_skipped": round(float(skipped[at]), 4),
                                 **{k: round(float(v[at]), 6) for k, v in scores.items()}})
    return rows


def _rotating(prompts: list[str], size: int, repeat: int) -> list[str]:
    return [prompts[(repeat * size + j) % len(prompts)] for j in range(size)]


def request_calls(decoder: RoutedDecoder, counts: list[int], gates: dict[int, DepthGate],
                  new_tokens: int) -> dict[tuple[str, int], callable]:
    """{(method, n): a function generating `new_tokens` greedy tokens (no early stop) for a batch} for
    every timed point: the prefill runs every layer; routing (from the prefill's first layers), the
    map lookup, the prompt's own layer scores (recorded during its prefill) and the gate happen
    inside the call."""
    model, n_layers = decoder.model, decoder.model.config.num_hidden_layers

    def adaptive(kind, n):
        def call(batch):
            cache = DynamicCache(config=model.config)
            logits, routes = decoder.route_and_prefill(batch, cache, decoder.settings.mode, kind, n / n_layers)
            return continue_with_plans(model, logits.argmax(-1), batch["attention_mask"], cache,
                                       [r.plan for r in routes], new_tokens)
        return call

    calls = {("full", 0): lambda batch: plain_generate(model, batch, new_tokens)}
    for n in counts:
        if n == 0:
            continue
        plan = make_plan(decoder.global_layers(n), decoder.settings.mode, decoder.settings.alpha)
        calls[("global", n)] = lambda batch, p=plan: generate_after_full_prefill(
            model, batch, new_tokens, [p] * batch["input_ids"].shape[0])
        calls[(ROUTED, n)] = adaptive("category", n)
        if decoder.topo.prompt_scores is not None:
            calls[(NEIGHBOURS, n)] = adaptive("neighbours", n)
        calls[(PROMPT, n)] = adaptive("prompt", n)
        if n in gates:
            calls[(DYNAMIC, n)] = lambda batch, g=gates[n]: dynamic_generate(model, batch, new_tokens, g)
    return calls


def measure_speed(decoder: RoutedDecoder, tokenizer, prompts: list[str], calls: dict[tuple, callable],
                  batch_sizes: list[int], new_tokens: int, warmup: int, repeats: int, seed: int) -> dict[tuple, dict]:
    """{(method, n, batch size): median seconds, IQR, tokens/s and the paired speedup over the full
    model}: in repeat r every call gets the same batch (the next `size` prompts of `prompts`), in a
    seeded random order; the first `warmup` repeats are not counted."""
    model = decoder.model
    out = {}
    for size in batch_sizes:
        times = {key: [] for key in calls}
        for r in range(warmup + repeats):
            batch = encode_prompts(tokenizer, _rotating(prompts, size, r), model.device, context_length(model) - new_tokens)
            one = time_interleaved({key: (lambda fn=fn: fn(batch)) for key, fn in calls.items()}, model.device, 0, 1,
                                   seed + r)
            if r >= warmup:
                for key, t in one.items():
                    times[key].append(float(t[0]))
        full = np.array(times[("full", 0)])
        for key, t in times.items():
            stats = summary(np.array(t))
            out[(*key, size)] = {**stats, **speedup(full, np.array(t)),
                                 "tok_per_s": round(size * new_tokens / stats["median_s"], 2)}
    return out


def summarise(rows: list[dict], speed: dict[tuple, dict], mode: str, n_layers: int, seed: int) -> list[dict]:
    """One row per split, method and count: quality means with intervals, paired differences from
    the global and routed plans at the same count, the layers actually skipped, and the measured
    generation speed of that point at each batch size."""
    out = []
    keys = sorted({(r["split"], r["method"], r["n_skipped"]) for r in rows})
    by_key = {k: [r for r in rows if (r["split"], r["method"], r["n_skipped"]) == k] for k in keys}
    sizes = sorted({k[2] for k in speed})
    for split, method, n in keys:
        members = by_key[(split, method, n)]
        top1 = mean_interval([r["top1"] for r in members], seed)
        skipped = float(np.mean([r["layers_skipped"] for r in members]))
        row = {"split": split, "method": method, "mode": mode if method not in (DYNAMIC, CALM, FLOOR) else "per-token",
               "n_skipped": n, "layers_skipped": round(skipped, 3), "fraction": round(n / n_layers, 4),
               "n_prompts": len(members), "top1": round(top1.mean, 4), "top1_ci_low": round(top1.low, 4),
               "top1_ci_high": round(top1.high, 4), "top5": round(float(np.mean([r["top5"] for r in members])), 4),
               "kl": round(float(np.mean([r["kl"] for r in members])), 4)}
        for other in COMPARED:
            if other != method and (split, other, n) in by_key and n > 0:
                theirs = {(r["category"], r["prompt"]): r["top1"] for r in by_key[(split, other, n)]}
                diff = paired_difference([r["top1"] for r in members],
                                         [theirs[(r["category"], r["prompt"])] for r in members], seed)
                row.update({k: round(v, 4) for k, v in diff.as_dict(f"minus_{other}_top1").items()})
        for size in sizes:
            timed = speed.get((method, n, size)) or (speed.get(("full", 0, size)) if n == 0 and method != FLOOR else None)
            if timed is not None:
                row.update({f"b{size}_tok_per_s": timed["tok_per_s"], f"b{size}_speedup": round(timed["speedup"], 4),
                            f"b{size}_speedup_q1": round(timed["speedup_q1"], 4),
                            f"b{size}_speedup_q3": round(timed["speedup_q3"], 4)})
        row["ideal_decode_speedup"] = round(n_layers / (n_layers - skipped), 4) if mode == "hard" or row["mode"] == "per-token" else 1.0
        out.append(row)
    return out


# the ladder, least input-dependent first; the gaps compare each level with the one below it among
# those measured (without map.prompt_scores there is no neighbours level: prompt is compared with the
# category), plus the ceiling and the control that separates the category label from the measure the
# finer levels use
LADDER = ("global", ROUTED, NEIGHBOURS, PROMPT, DYNAMIC)
EXTRA_PAIRS = ((PROMPT_ORACLE, PROMPT), (NEIGHBOURS, CATEGORY_SCORES), (CATEGORY_SCORES, ROUTED))


def ladder_pairs(methods: set[str]) -> list[tuple[str, str]]:
    """(higher, lower) for each adjacent pair of the measured ladder levels, then the extra pairs."""
    levels = [m for m in LADDER if m in methods]
    return list(zip(levels[1:], levels[:-1])) + [p for p in EXTRA_PAIRS if set(p) <= methods]


def ladder_gaps(rows: list[dict], seed: int) -> list[dict]:
    """Per split and count, the paired top-1 (and KL) difference between each pair of `ladder_pairs`
    measured on the same prompts, with its 95% interval."""
    index = {(r["split"], r["method"], r["n_skipped"], r["category"], r["prompt"]): r for r in rows}
    out = []
    for split in sorted({r["split"] for r in rows}):
        for n in sorted({r["n_skipped"] for r in rows if r["n_skipped"] > 0}):
            for higher, lower in ladder_pairs({r["method"] for r in rows if r["n_skipped"] == n}):
                keys = [(r["category"], r["prompt"]) for r in rows
                        if (r["split"], r["method"], r["n_skipped"]) == (split, higher, n)]
                pairs = [(index[(split, higher, n, *k)], index.get((split, lower, n, *k))) for k in keys]
                if not pairs or any(b is None for _, b in pairs):
                    continue
                row = {"split": split, "n_skipped": n, "higher": higher, "lower": lower, "n_prompts": len(pairs)}
                for metric in ("top1", "kl"):
                    diff = paired_difference([a[metric] for a, _ in pairs], [b[metric] for _, b in pairs], seed)
                    row.update({f"{metric}_difference{k[len(metric):]}": round(v, 4)
                                for k, v in diff.as_dict(metric).items() if not k.endswith("_n")})
                out.append(row)
    return out


@torch.inference_mode()
def dynamic_overheads(model, tokenizer, prompt: str, layer_index: int, warmup: int = 3, repeats: int = 30,
                      seed: int = 0) -> dict:
    """What the dynamic mode adds per token and layer, as a fraction of running that layer on one new
    position after `prompt` (batch 1, cached): filling a skipped layer's keys and values, and the gate
    (the cosine similarity of the layer's input and output). Medians of interleaved repeats; the cache
    is cut back to the prompt after every call."""
    ids = encode_prompts(tokenizer, [prompt], model.device)["input_ids"][0].tolist()
    cache = DynamicCache(config=model.config)
    first = prefill(model, ids, cache)
    length = len(ids)
    x = model.model.embed_tokens(torch.tensor([[first]], device=model.device))
    ctx = layer_kwargs(model, x, cache, torch.ones((1, length + 1), dtype=torch.long, device=model.device))
    layer = decoder_layers(model)[layer_index]
    out = layer(x, **ctx)
    truncate_cache(cache, length)
    precision = torch.promote_types(x.dtype, torch.float32)

    def cut(fn):
        def call():
            fn()
            truncate_cache(cache, length)
        return call

    seconds = time_interleaved({
        "layer": cut(lambda: layer(x, **ctx)),
        "fill_kv": cut(lambda: fill_kv(layer, x, ctx)),
        "gate": lambda: bool(torch.cosine_similarity(x[:, -1].to(precision), out[:, -1].to(precision), dim=-1)[0] >= 0.5),
    }, model.device, warmup, repeats, seed)
    median = {name: float(np.median(s)) for name, s in seconds.items()}
    return {"layer_ms": round(1000 * median["layer"], 4), "layer_index": layer_index,
            "fill_kv_ms": round(1000 * median["fill_kv"], 4), "gate_ms": round(1000 * median["gate"], 4),
            "fill_kv_fraction": round(median["fill_kv"] / median["layer"], 4),
            "gate_fraction": round(median["gate"] / median["layer"], 4)}
