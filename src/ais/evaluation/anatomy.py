"""Where a decode step's time goes, measured with the engine's own block clock (the device
synchronised around every block): embedding, each layer's attention and MLP block, the final norm
and head, and the rest (gather, scatter, cache bookkeeping, Python)."""
from __future__ import annotations

import torch

from ais.decoding.greedy import decode, prefill
from ais.device import Stopwatch
from ais.model.engine import BlockClock
from ais.model.prompts import context_length, encode_prompts


@torch.inference_mode()
def step_clock(engine, batch: dict, new_tokens: int, repeats: int) -> tuple[BlockClock, float, int]:
    """(the block clock summed over `repeats` greedy decodes of `new_tokens` tokens after one untimed
    warm-up, their wall seconds, the decode steps timed)."""
    flight, logits = prefill(engine, batch)
    decode(flight, logits.argmax(-1), min(new_tokens, 2))
    clock, wall, steps = BlockClock(), 0.0, 0
    for _ in range(repeats):
        flight, logits = prefill(engine, batch)
        with Stopwatch(engine.device) as watch:
            decode(flight, logits.argmax(-1), new_tokens, clock=clock)
        wall += watch.seconds
        steps += new_tokens - 1
    return clock, wall, steps


def block_costs(engine, tokenizer, prompt: str, new_tokens: int = 8, repeats: int = 3) -> dict[str, float]:
    """Seconds per decode step (batch 1) of every block: `attention@i`, `mlp@i`, `head`, `embed`, and
    `layer`, the mean of a whole layer's (attention + MLP) over the layers."""
    batch = encode_prompts(tokenizer, [prompt], engine.device, context_length(engine.model) - new_tokens)
    clock, _, steps = step_clock(engine, batch, new_tokens, repeats)
    costs = {name: seconds / steps for name, seconds in clock.seconds.items()}
    layers = [costs.get(f"attention@{i}", 0.0) + costs.get(f"mlp@{i}", 0.0) for i in range(engine.n_layers)]
    costs["layer"] = sum(layers) / len(layers)
    return costs
