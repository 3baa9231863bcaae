"""Greedy decoding on the engine: one loop for every mode (full, per-row plans, the per-token gate)."""
from __future__ import annotations

import torch

from ais.model.engine import Batch, Engine, Record


@torch.inference_mode()
def prefill(engine: Engine, batch: dict, plans=None, decode_plans=None, record: Record | None = None,
            clock=None) -> tuple[Batch, torch.Tensor]:
    """Run the prompts (a left-padded batch {input_ids, attention_mask}) through every layer under
    `plans` (None: every layer), filling the cache; then set `decode_plans` (default: `plans`) for the
    tokens to come. Returns (the batch in flight, last-position logits B x vocab), as `generate`'s
    prefill computes them."""
    flight = engine.start(batch["attention_mask"])
    x, ctx = flight.feed(batch["input_ids"], clock=clock)
    hidden = flight.run(x, ctx, plans=plans, record=record, clock=clock)
    flight.set_plans(plans if decode_plans is None else decode_plans)
    return flight, engine.last_logits(hidden, clock)


@torch.inference_mode()
def decode(flight: Batch, first: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None,
           pad_token_id: int = 0, gate=None, clock=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy decoding from a prefilled batch, given each row's first new token: (ids B x max_new_tokens,
    layers each generated token ran, B x max_new_tokens, with the gate; else None). Rows that produced
    `eos_token_id` are padded with `pad_token_id` after it (depth 0); once every row has ended, nothing
    more runs."""
    n_layers = flight.engine.n_layers
    tokens = [first]
    depths = [torch.full_like(first, n_layers)] if gate is not None else None
    done = first == eos_token_id if eos_token_id is not None else torch.zeros_like(first, dtype=torch.bool)
    for _ in range(max_new_tokens - 1):
        if bool(done.all()):
            tokens.append(torch.full_like(first, pad_token_id))
            if depths is not None:
                depths.append(torch.zeros_like(first))
            continue
        hidden = flight.step(tokens[-1][:, None], gate=gate, clock=clock, logits=False)
        nxt = torch.full_like(first, pad_token_id)
        active = torch.nonzero(~done).flatten()  # the head runs on the rows that still need a token
        nxt[active] = flight.engine.last_logits(hidden[active], clock).argmax(-1)
        if depths is not None:
            depths.append(torch.where(done, torch.zeros_like(first), flight.depth))
        if eos_token_id is not None:
            done = done | (nxt == eos_token_id)
        tokens.append(nxt)
    return torch.stack(tokens, 1), (torch.stack(depths, 1) if depths is not None else None)


@torch.inference_mode()
def generate(engine: Engine, batch: dict, max_new_tokens: int, plans=None, decode_plans=None,
             eos_token_id: int | None = None, gate=None) -> torch.Tensor:
    """Greedy continuation ids (B x max_new_tokens) of a left-padded batch: the prefill under `plans`,
    the generated tokens under `decode_plans` (default `plans`) or the per-token `gate`."""
    flight, logits = prefill(engine, batch, plans, decode_plans)
    return decode(flight, logits.argmax(-1), max_new_tokens, eos_token_id, gate=gate)[0]
