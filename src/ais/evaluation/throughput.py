"""Throughput of the routed decoder against the full model: requests/s of one prefill forward and
tokens/s of greedy generation, the router inside the clock, on batches that mix categories (as
real traffic would), the variants interleaved in a random order."""
from __future__ import annotations

import numpy as np

from ais.decoding.greedy import next_token_logits, plain_generate
from ais.decoding.routed import RoutedDecoder
from ais.evaluation.timing import summary, time_interleaved
from ais.model.prompts import context_length, encode_prompts


def skipped_fraction(routes, n_layers: int) -> dict[str, float]:
    """Mean fraction of layers the routes' plans touch (`all`) and bypass (`hard`: compute saved)."""
    return {"all": float(np.mean([len(r.plan.layers) for r in routes])) / n_layers,
            "hard": float(np.mean([len(r.plan.hard) for r in routes])) / n_layers}


def prefill_benchmark(decoder: RoutedDecoder, tokenizer, prompts: list[str], batch_sizes: list[int],
                      warmup: int, repeats: int) -> list[dict]:
    """Requests/s of one forward over a batch: full model, the routed plan in `skip.mode` (router
    included), the same plan applied statically (no router), and the router alone."""
    model = decoder.model
    rows = []
    for size in batch_sizes:
        chosen = [prompts[i % len(prompts)] for i in range(size)]
        batch = encode_prompts(tokenizer, chosen, model.device, context_length(model))
        _, routes = decoder.next_token_logits(batch)
        plan = routes[0].plan
        times = time_interleaved({
            "full": lambda: next_token_logits(model, batch),
            "routed": lambda: decoder.next_token_logits(batch),
            "static_plan": lambda: next_token_logits(model, batch, plan),
            "router_only": lambda: decoder.route_embeddings(decoder.prefix(batch)[2]),
        }, model.device, warmup, repeats)
        stats = {name: summary(t) for name, t in times.items()}
        skipped = skipped_fraction(routes, model.config.num_hidden_layers)
        rows.append({
            "batch_size": size, "n_tokens": int(batch["input_ids"].shape[1]), "plans_in_batch": len({r.plan for r in routes}),
            "skipped_fraction": round(skipped["all"], 4),
            "full_req_per_s": round(size / stats["full"]["median_s"], 2),
            "routed_req_per_s": round(size / stats["routed"]["median_s"], 2),
            "static_plan_req_per_s": round(size / stats["static_plan"]["median_s"], 2),
            "speedup_routed": round(stats["full"]["median_s"] / stats["routed"]["median_s"], 4),
            "speedup_static_plan": round(stats["full"]["median_s"] / stats["static_plan"]["median_s"], 4),
            "ideal_speedup": round(1 / (1 - skipped["hard"]), 4),
            "router_fraction_of_full": round(stats["router_only"]["median_s"] / stats["full"]["median_s"], 4),
            **{f"{name}_{k}": round(v, 6) for name, s in stats.items() for k, v in s.items()},
        })
    return rows


def generation_benchmark(decoder: RoutedDecoder, tokenizer, prompts: list[str], batch_sizes: list[int],
                         new_tokens: int, warmup: int, repeats: int) -> list[dict]:
    """Greedy tokens/s (no early stop), full model vs the routed plan in `skip.mode`, the same
    decoding loop for both."""
    model = decoder.model
    rows = []
    for size in batch_sizes:
        chosen = [prompts[i % len(prompts)] for i in range(size)]
        batch = encode_prompts(tokenizer, chosen, model.device, context_length(model) - new_tokens)
        times = time_interleaved({
            "full": lambda: plain_generate(model, batch, new_tokens),
            "routed": lambda: decoder.generate(batch, new_tokens),
        }, model.device, warmup, repeats)
        stats = {name: summary(t) for name, t in times.items()}
        _, routes = decoder.generate(batch, 1)
        skipped = skipped_fraction(routes, model.config.num_hidden_layers)
        rows.append({
            "batch_size": size, "new_tokens": new_tokens, "skipped_fraction": round(skipped["all"], 4),
            "full_tok_per_s": round(size * new_tokens / stats["full"]["median_s"], 2),
            "routed_tok_per_s": round(size * new_tokens / stats["routed"]["median_s"], 2),
            "speedup_routed": round(stats["full"]["median_s"] / stats["routed"]["median_s"], 4),
            "ideal_speedup": round(1 / (1 - skipped["hard"]), 4),
            **{f"{name}_{k}": round(v, 6) for name, s in stats.items() for k, v in s.items()},
        })
    return rows
