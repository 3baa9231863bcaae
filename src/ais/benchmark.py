"""Timing, done properly: warm-up, many repeats, medians with spread, the device synchronised
before every clock read, and the variants of one comparison interleaved so drift hits all alike."""
from __future__ import annotations

import time

import numpy as np
import torch

from ais.decode import context_length, encode_prompts
from ais.decoder import RoutedDecoder, plain_generate, plain_next_token_logits
from ais.skip import skipping


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_interleaved(calls: dict, device, warmup: int, repeats: int) -> dict[str, np.ndarray]:
    """Seconds per call for each named zero-argument callable, alternating between them."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: np.array(t) for name, t in times.items()}


def summary(seconds: np.ndarray) -> dict:
    q1, med, q3 = np.percentile(seconds, [25, 50, 75])
    return {"median_s": float(med), "iqr_s": float(q3 - q1)}


def prefill_benchmark(decoder: RoutedDecoder, tokenizer, prompts: list[str], batch_sizes: list[int],
                      warmup: int, repeats: int) -> list[dict]:
    """Requests/s of one forward over a batch: full model, routed hard skip (router included),
    the same plan applied statically (no router), and the router alone."""
    model = decoder.model
    rows = []
    for size in batch_sizes:
        chosen = [prompts[i % len(prompts)] for i in range(size)]
        batch = encode_prompts(tokenizer, chosen, model.device, context_length(model))
        _, routes = decoder.next_token_logits(batch)
        plan = routes[0].plan
        static = lambda: _static(model, batch, plan)
        times = time_interleaved({
            "full": lambda: plain_next_token_logits(model, batch),
            "routed": lambda: decoder.next_token_logits(batch),
            "static_plan": static,
            "router_only": lambda: decoder.prefix(batch),
        }, model.device, warmup, repeats)
        stats = {name: summary(t) for name, t in times.items()}
        skipped = float(np.mean([len(r.plan.layers) for r in routes])) / model.config.num_hidden_layers
        rows.append({
            "batch_size": size, "n_tokens": int(batch["input_ids"].shape[1]), "plans_in_batch": len({r.plan for r in routes}),
            "skipped_fraction": round(skipped, 4),
            "full_req_per_s": round(size / stats["full"]["median_s"], 2),
            "routed_req_per_s": round(size / stats["routed"]["median_s"], 2),
            "static_plan_req_per_s": round(size / stats["static_plan"]["median_s"], 2),
            "speedup_routed": round(stats["full"]["median_s"] / stats["routed"]["median_s"], 4),
            "speedup_static_plan": round(stats["full"]["median_s"] / stats["static_plan"]["median_s"], 4),
            "ideal_speedup": round(1 / (1 - skipped), 4),
            "router_fraction_of_full": round(stats["router_only"]["median_s"] / stats["full"]["median_s"], 4),
            **{f"{name}_{k}": round(v, 6) for name, s in stats.items() for k, v in s.items()},
        })
    return rows


@torch.inference_mode()
def _static(model, batch, plan):
    with skipping(model, plan):
        return plain_next_token_logits(model, batch)


def generation_benchmark(decoder: RoutedDecoder, tokenizer, prompts: list[str], batch_sizes: list[int],
                         new_tokens: int, warmup: int, repeats: int) -> list[dict]:
    """Greedy tokens/s (no early stop), full model vs routed hard skip, the same decoding loop for both."""
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
        skipped = float(np.mean([len(r.plan.layers) for r in routes])) / model.config.num_hidden_layers
        rows.append({
            "batch_size": size, "new_tokens": new_tokens, "skipped_fraction": round(skipped, 4),
            "full_tok_per_s": round(size * new_tokens / stats["full"]["median_s"], 2),
            "routed_tok_per_s": round(size * new_tokens / stats["routed"]["median_s"], 2),
            "speedup_routed": round(stats["full"]["median_s"] / stats["routed"]["median_s"], 4),
            "ideal_speedup": round(1 / (1 - skipped), 4),
            **{f"{name}_{k}": round(v, 6) for name, s in stats.items() for k, v in s.items()},
        })
    return rows
