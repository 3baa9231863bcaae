"""The router embedding: the hidden state after the first `pivot` layers, pooled over tokens.

The forward stops after layer `pivot - 1` (a hook stores that layer's raw output and raises),
so the layers past the pivot never run; the value equals `output_hidden_states[pivot]`.
"""
from __future__ import annotations

import torch

from ais.skip import decoder_layers


class _Stop(Exception):
    """Raised by the pivot hook to end the forward early."""


def default_pivot(n_layers: int) -> int:
    """A third of the layers, as in the original prototype (9 of 28 there, 10 of 30 for SmolLM2)."""
    return max(1, n_layers // 3)


def check_pivot(pivot: int, n_layers: int) -> int:
    if isinstance(pivot, bool) or not isinstance(pivot, int) or not 1 <= pivot <= n_layers:
        raise ValueError(f"router.pivot_layer={pivot!r} must be an integer in 1..{n_layers} (layers run before pooling)")
    return pivot


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """`last`: the last position (rows are left-padded); `mean`: mean over real tokens."""
    if pooling == "last":
        return hidden[:, -1, :]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
    raise ValueError(f"router.pooling={pooling!r} must be 'last' or 'mean'")


@torch.inference_mode()
def pivot_hidden(model, batch: dict, pivot: int) -> torch.Tensor:
    """Raw hidden states (B x T x H) after layer `pivot - 1`; later layers do not run."""
    layers = decoder_layers(model)
    check_pivot(pivot, len(layers))
    captured = {}

    def hook(module, args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = layers[pivot - 1].register_forward_hook(hook)
    try:
        model.model(**batch, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["hidden"]


def router_embedding(model, batch: dict, pivot: int, pooling: str = "last") -> torch.Tensor:
    """One float32 vector per prompt: pooled hidden state after `pivot` layers."""
    hidden = pivot_hidden(model, batch, pivot)
    return pool(hidden, batch["attention_mask"], pooling).float()
