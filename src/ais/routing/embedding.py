"""The router embedding: the hidden state after the first `pivot` layers, pooled over tokens.

The forward stops after layer `pivot - 1` (a hook stores that layer's raw output and raises),
so the layers past the pivot never run; the value equals `output_hidden_states[pivot]`.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ais.model.forward import recording_influence
from ais.model.gating import decoder_layers
from ais.model.prompts import context_length, encode_prompts


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


def embed_prompts(model, tokenizer, prompts: list[str], pivot: int, pooling: str = "last",
                  batch_size: int = 16, progress: bool = True) -> np.ndarray:
    """Router embeddings (N x hidden, float32) for chat prompts, in batches of similar length
    (less padding); rows come back in the order of `prompts`. Shows a progress bar."""
    check_pivot(pivot, len(decoder_layers(model)))
    lengths = [len(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    out = np.zeros((len(prompts), model.config.hidden_size), dtype=np.float32)
    with tqdm(total=len(prompts), desc=f"router embeddings (pivot {pivot})", unit="prompt",
              disable=not progress, mininterval=2.0) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = encode_prompts(tokenizer, [prompts[i] for i in idx], model.device, context_length(model))
            out[idx] = router_embedding(model, batch, pivot, pooling).cpu().numpy()
            bar.update(len(idx))
    return out


@torch.inference_mode()
def embed_and_score(model, tokenizer, prompts: list[str], pivot: int, pooling: str = "last", batch_size: int = 16,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Router embeddings (N x hidden) and each prompt's own layer scores (N x n_layers: block
    influence, 1 - cos(layer input, output), averaged over its tokens) from one full forward per
    batch of similar-length prompts; the embedding is the state after layer `pivot - 1`, as the
    router computes it. Rows come back in the order of `prompts`."""
    layers = decoder_layers(model)
    check_pivot(pivot, len(layers))
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    vectors = np.zeros((len(prompts), model.config.hidden_size), dtype=np.float32)
    scores = np.zeros((len(prompts), len(layers)), dtype=np.float32)
    captured = {}
    handle = layers[pivot - 1].register_forward_hook(
        lambda module, args, output: captured.__setitem__("hidden", output[0] if isinstance(output, tuple) else output))
    try:
        with tqdm(total=len(prompts), desc=f"router embeddings (pivot {pivot}) and layer scores", unit="prompt",
                  disable=not progress, mininterval=2.0) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = encode_prompts(tokenizer, [prompts[i] for i in idx], model.device, context_length(model))
                with recording_influence(model, batch["attention_mask"]) as influence:
                    model.model(**batch, use_cache=False)
                vectors[idx] = pool(captured["hidden"], batch["attention_mask"], pooling).float().cpu().numpy()
                scores[idx] = torch.stack([influence[i] for i in range(len(layers))], 1).cpu().numpy()
                bar.update(len(idx))
    finally:
        handle.remove()
    return vectors, scores


def resolve_pivot(value, n_layers: int) -> int:
    """router.pivot_layer: `auto` is a third of the layers; an integer is checked against the model."""
    if value == "auto":
        return default_pivot(n_layers)
    return check_pivot(value, n_layers)


@torch.inference_mode()
def embed_all_layers(model, tokenizer, prompts: list[str], pooling: str = "last", batch_size: int = 16,
                     progress: bool = True) -> np.ndarray:
    """Pooled hidden states after every layer count 1..n_layers (n_layers x N x hidden) from one
    full forward per batch: the data of the pivot-layer sweep."""
    n_layers = len(decoder_layers(model))
    out = np.zeros((n_layers, len(prompts), model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    for start in tqdm(range(0, len(order), batch_size), desc="pivot sweep (all layers)", unit="batch",
                      disable=not progress, mininterval=2.0):
        idx = order[start:start + batch_size]
        batch = encode_prompts(tokenizer, [prompts[i] for i in idx], model.device, context_length(model))
        hidden = model.model(**batch, use_cache=False, output_hidden_states=True).hidden_states
        for layer in range(1, n_layers + 1):
            out[layer - 1, idx] = pool(hidden[layer], batch["attention_mask"], pooling).float().cpu().numpy()
    return out
