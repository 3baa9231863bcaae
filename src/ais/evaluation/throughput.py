"""Throughput of mixed traffic: batches whose rows come from different categories, so that every
row has its own plan. Prefill requests/s and generation tokens/s of the full model, the routed plan
(router included), the global plan with the same number of layers (one plan for the whole batch),
and the prompt's own plan (its prefill runs every layer), timed interleaved, medians of repeats with
the interquartile range; and whether each row of a mixed batch generates what the same request
generates alone."""
from __future__ import annotations

import numpy as np
import torch

from ais.decoding.greedy import decode, prefill
from ais.device import WARMUP_TOKENS, summary, time_interleaved
from ais.model.prompts import context_length, encode_prompts


def skipped_fraction(routes, n_layers: int) -> dict[str, float]:
    """Mean fraction of layers the routes' plans touch (`all`) and bypass (`hard`: compute saved)."""
    return {"all": float(np.mean([len(r.plan.layers) for r in routes])) / n_layers,
            "hard": float(np.mean([len(r.plan.hard) for r in routes])) / n_layers}


def _ratio(a: np.ndarray, b: np.ndarray) -> dict:
    """Per-repeat ratio of rates b/a (a, b: seconds of the same work), median and quartiles."""
    ratios = np.asarray(b) / np.asarray(a)
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": round(float(med), 4), "q1": round(float(q1), 4), "q3": round(float(q3), 4)}


def _methods(decoder, n: int) -> dict:
    """The routed decoder, and the same router with the global and prompt plans, each at n layers."""
    return {"routed": decoder, "global": decoder.with_plan("global"), "prompt": decoder.with_plan("prompt")}


def prefill_benchmark(decoder, tokenizer, prompts: list[str], batch_sizes: list[int], warmup: int,
                      repeats: int, target_iqr: float | None = None) -> list[dict]:
    """Requests/s of one prefill of a batch (next-token logits): full model, the routed plan in
    `skip.mode` (router included: its layers are the prefill's first), the global plan with as many
    layers as the routed plans have on average, and the router alone; at most `repeats` repeats, fewer
    once every speedup's interquartile range is at most `target_iqr`."""
    engine = decoder.engine
    rows = []
    for size in batch_sizes:
        chosen = [prompts[i % len(prompts)] for i in range(size)]
        batch = encode_prompts(tokenizer, chosen, engine.device, context_length(engine.model))
        _, _, routes = decoder.prefill(batch)
        n = int(round(np.mean([len(r.plan.layers) for r in routes])))
        glob = decoder.with_plan("global")
        times = time_interleaved({
            "full": lambda: prefill(engine, batch),
            "routed": lambda: decoder.prefill(batch),
            "global": lambda: glob.prefill(batch, layers=n),
            "router_only": lambda: engine.forward(batch["input_ids"], batch["attention_mask"], stop=decoder.pivot),
        }, engine.device, warmup, repeats, baseline="full", target_iqr=target_iqr)
        stats = {name: summary(t) for name, t in times.items()}
        skipped = skipped_fraction(routes, engine.n_layers)
        tokens = int(batch["attention_mask"].sum())
        rows.append({
            "batch_size": size, "repeats": len(times["full"]), "n_tokens": int(batch["input_ids"].shape[1]),
            "real_tokens": tokens,
            "padding_share": round(1 - tokens / batch["input_ids"].numel(), 4),
            "plans_in_batch": len({r.plan for r in routes}), "skipped_fraction": round(skipped["all"], 4),
            "full_req_per_s": round(size / stats["full"]["median_s"], 2),
            "routed_req_per_s": round(size / stats["routed"]["median_s"], 2),
            "global_req_per_s": round(size / stats["global"]["median_s"], 2),
            "full_real_tok_per_s": round(tokens / stats["full"]["median_s"], 1),
            "speedup_routed": round(stats["full"]["median_s"] / stats["routed"]["median_s"], 4),
            "speedup_global": round(stats["full"]["median_s"] / stats["global"]["median_s"], 4),
            "routed_over_global": _ratio(times["routed"], times["global"]),
            "ideal_speedup": round(1 / (1 - skipped["hard"]), 4),
            "router_fraction_of_full": round(stats["router_only"]["median_s"] / stats["full"]["median_s"], 4),
            **{f"{name}_{k}": round(v, 6) for name, s in stats.items() for k, v in s.items()},
        })
    return rows


def generation_benchmark(decoder, tokenizer, prompts: list[str], batch_sizes: list[int], new_tokens: int,
                         warmup: int, repeats: int, target_iqr: float | None = None) -> list[dict]:
    """Greedy tokens/s (no early stop) of whole requests, rows of mixed categories: the full model, the
    routed plan, the global plan at the same mean layer count, the prompt's own plan; and the per-repeat
    ratio of the routed and prompt plans' speed to the global plan's. The warm-up rounds generate
    `WARMUP_TOKENS` (every code path, less work); at most `repeats` repeats, fewer once every
    speedup's interquartile range is at most `target_iqr`."""
    engine = decoder.engine
    rows = []
    for size in batch_sizes:
        chosen = [prompts[i % len(prompts)] for i in range(size)]
        batch = encode_prompts(tokenizer, chosen, engine.device, context_length(engine.model) - new_tokens)
        _, routes, _ = decoder.generate(batch, 1)
        n = int(round(np.mean([len(r.plan.layers) for r in routes])))
        others = _methods(decoder, n)

        def full(tokens):
            flight, logits = prefill(engine, batch)
            return decode(flight, logits.argmax(-1), tokens)

        def calls_of(tokens: int) -> dict:
            return {"full": lambda: full(tokens),
                    **{name: (lambda d=d: d.generate(batch, tokens, layers=n if d is not decoder else None))
                       for name, d in others.items()}}

        calls = calls_of(new_tokens)
        times = time_interleaved(calls, engine.device, warmup, repeats, warm=calls_of(min(WARMUP_TOKENS, new_tokens)),
                                 baseline="full", target_iqr=target_iqr)
        stats = {name: summary(t) for name, t in times.items()}
        skipped = skipped_fraction(routes, engine.n_layers)
        rows.append({
            "batch_size": size, "new_tokens": new_tokens, "repeats": len(times["full"]),
            "categories_in_batch": len({r.category for r in routes}),
            "plans_in_batch": len({r.plan for r in routes}), "skipped_fraction": round(skipped["all"], 4),
            "layers": n, **{f"{name}_tok_per_s": round(size * new_tokens / stats[name]["median_s"], 2) for name in calls},
            "speedup_routed": round(stats["full"]["median_s"] / stats["routed"]["median_s"], 4),
            "speedup_global": round(stats["full"]["median_s"] / stats["global"]["median_s"], 4),
            "speedup_prompt": round(stats["full"]["median_s"] / stats["prompt"]["median_s"], 4),
            "routed_over_global": _ratio(times["routed"], times["global"]),
            "prompt_over_global": _ratio(times["prompt"], times["global"]),
            "ideal_speedup": round(1 / (1 - skipped["hard"]), 4),
            **{f"{name}_{k}": round(v, 6) for name, s in stats.items() for k, v in s.items()},
        })
    return rows


def _same_tokens(a: torch.Tensor, b: torch.Tensor, stop: set[int]) -> bool:
    """Whether two greedy continuations agree up to and including the first stop token (a batch
    pads finished rows; a request alone stops)."""
    def cut(t):
        out = []
        for x in t.tolist():
            out.append(x)
            if x in stop:
                break
        return out
    return cut(a) == cut(b)


@torch.inference_mode()
def mixed_batch_exactness(decoder, tokenizer, prompts: list[str], size: int, new_tokens: int) -> dict:
    """For a mixed batch of `size` rows: the share of rows whose greedy tokens equal the same request's
    generated alone, for the routed and the prompt plan, and, as the yardstick of what batching alone
    does in this dtype, the same share for transformers' own `generate` of the full model."""
    device = decoder.engine.device
    stop = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    chosen = [prompts[i % len(prompts)] for i in range(size)]
    batch = encode_prompts(tokenizer, chosen, device, context_length(decoder.model) - new_tokens)
    alone = [encode_prompts(tokenizer, [p], device) for p in chosen]
    width = batch["input_ids"].shape[1]

    def hf(b):
        out = decoder.model.generate(**b, max_new_tokens=new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
        return out[:, b["input_ids"].shape[1]:]

    runs = {"generate": (lambda: hf(batch), lambda b: hf(b)[0])}
    for name, d in (("routed", decoder), ("prompt", decoder.with_plan("prompt"))):
        runs[name] = ((lambda d=d: d.generate(batch, new_tokens)[0]), (lambda b, d=d: d.generate(b, new_tokens)[0][0]))
    out = {}
    for name, (together_of, alone_of) in runs.items():
        together = together_of()
        same = [_same_tokens(together[j], alone_of(b), stop) for j, b in enumerate(alone)]
        out[name] = {"rows": size, "identical_share": round(float(np.mean(same)), 4),
                     "differing_rows": [j for j, s in enumerate(same) if not s], "width": int(width)}
    return out
