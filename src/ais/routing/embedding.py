"""The router embedding: the hidden state after the first `pivot` layers, pooled over tokens.

The engine runs layers 0..pivot-1 only (`stop=pivot`), so the layers past the pivot never run; the
value equals `output_hidden_states[pivot]` of a full forward with the same positions.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ais.files import load_npz, sha256_file
from ais.model.engine import Engine, Record
from ais.model.plan import decoder_layers
from ais.model.prompts import context_length, encode_prompts


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
    check_pivot(pivot, len(decoder_layers(model)))
    return Engine(model).forward(batch["input_ids"], batch["attention_mask"], stop=pivot)


def router_embedding(model, batch: dict, pivot: int, pooling: str = "last") -> torch.Tensor:
    """One float32 vector per prompt: pooled hidden state after `pivot` layers."""
    hidden = pivot_hidden(model, batch, pivot)
    return pool(hidden, batch["attention_mask"], pooling).float()


def length_batches(prompts: list[str], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches of similar length (less padding), shortest first."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def shard_of(batches: list[list[int]], shard: int, num_shards: int) -> list[list[int]]:
    """The batches shard `shard` of `num_shards` computes: every num_shards-th batch of the one global
    batching, so each batch is the same in a shard as in the whole run (left padding makes a prompt's
    numbers depend, to the last bit, on its batch's composition) and the merge is bit for bit."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard!r} of {num_shards!r}: need 0 <= shard < num_shards")
    return batches[shard::num_shards]


@torch.inference_mode()
def embed_batches(model, tokenizer, prompts: list[str], batches: list[list[int]], pivot: int, pooling: str = "last",
                  scores: bool = False, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(prompt indices, router embeddings, layer scores or None) for the prompts in `batches`, one
    forward per batch: the router's layers only, or with `scores` every layer, which also gives each
    prompt's own block influence (1 - cos(layer input, output), averaged over its tokens); the
    embedding is the state after layer `pivot - 1` either way."""
    engine = Engine(model)
    check_pivot(pivot, engine.n_layers)
    indices = [i for batch in batches for i in batch]
    vectors = np.zeros((len(indices), model.config.hidden_size), dtype=np.float32)
    influence_rows = np.zeros((len(indices), engine.n_layers), dtype=np.float32) if scores else None
    desc = f"router embeddings (pivot {pivot})" + (" and layer scores" if scores else "")
    row = 0
    with tqdm(total=len(indices), desc=desc, unit="prompt", disable=not progress, mininterval=2.0) as bar:
        for idx in batches:
            batch = encode_prompts(tokenizer, [prompts[i] for i in idx], model.device, context_length(model))
            record = Record(influence=scores, outputs=(pivot - 1,))
            engine.forward(batch["input_ids"], batch["attention_mask"], stop=None if scores else pivot, record=record)
            if scores:
                influence_rows[row:row + len(idx)] = record.influence_matrix(len(idx), engine.n_layers, "cpu").numpy()
            hidden = record.kept_outputs[pivot - 1]
            vectors[row:row + len(idx)] = pool(hidden, batch["attention_mask"], pooling).float().cpu().numpy()
            row += len(idx)
            bar.update(len(idx))
    return np.array(indices, dtype=np.int64), vectors, influence_rows


def _in_order(n: int, indices: np.ndarray, *arrays):
    out = []
    for values in arrays:
        if values is None:
            out.append(None)
            continue
        ordered = np.zeros((n, values.shape[1]), dtype=values.dtype)
        ordered[indices] = values
        out.append(ordered)
    return out


def merge_shards(paths: list, corpus_path) -> dict:
    """The shards' arrays joined in corpus order, checked: one model identity and corpus, every prompt
    exactly once. The arrays the embed stage writes unsharded (embeddings, identity, corpus sha256,
    layer scores where kept)."""
    parts = [load_npz(p, "an embedding shard", "embed") for p in paths]
    identities = {str(p["identity"]) for p in parts}
    corpora = {str(p["corpus_sha256"]) for p in parts} | {sha256_file(corpus_path)}
    if len(identities) > 1 or len(corpora) > 1:
        raise ValueError(f"the shards {[str(p) for p in paths]} come from different models or corpora; "
                         "rerun `dvc repro embed`")
    indices = np.concatenate([p["indices"] for p in parts])
    n = len(indices)
    if sorted(indices.tolist()) != list(range(n)):
        raise ValueError(f"the shards {[str(p) for p in paths]} do not cover the corpus exactly once; rerun `dvc repro embed`")
    scored = [p.get("prompt_scores") for p in parts]
    vectors, scores = _in_order(n, indices, np.concatenate([p["embeddings"] for p in parts]),
                                np.concatenate(scored) if all(s is not None for s in scored) else None)
    out = {"embeddings": vectors, "identity": parts[0]["identity"], "corpus_sha256": parts[0]["corpus_sha256"]}
    return {**out, "prompt_scores": scores} if scores is not None else out


def embed_prompts(model, tokenizer, prompts: list[str], pivot: int, pooling: str = "last",
                  batch_size: int = 16, progress: bool = True) -> np.ndarray:
    """Router embeddings (N x hidden, float32) for chat prompts, in batches of similar length
    (less padding); rows come back in the order of `prompts`. Shows a progress bar."""
    indices, vectors, _ = embed_batches(model, tokenizer, prompts, length_batches(prompts, batch_size), pivot, pooling,
                                        progress=progress)
    return _in_order(len(prompts), indices, vectors)[0]


def embed_and_score(model, tokenizer, prompts: list[str], pivot: int, pooling: str = "last", batch_size: int = 16,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Router embeddings (N x hidden) and each prompt's own layer scores (N x n_layers) from one full
    forward per batch of similar-length prompts. Rows come back in the order of `prompts`."""
    indices, vectors, scores = embed_batches(model, tokenizer, prompts, length_batches(prompts, batch_size), pivot,
                                             pooling, scores=True, progress=progress)
    return tuple(_in_order(len(prompts), indices, vectors, scores))


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
    engine = Engine(model)
    out = np.zeros((engine.n_layers, len(prompts), model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    for start in tqdm(range(0, len(order), batch_size), desc="pivot sweep (all layers)", unit="batch",
                      disable=not progress, mininterval=2.0):
        idx = order[start:start + batch_size]
        batch = encode_prompts(tokenizer, [prompts[i] for i in idx], model.device, context_length(model))
        record = Record(states=True)
        engine.forward(batch["input_ids"], batch["attention_mask"], record=record)
        for layer in range(1, engine.n_layers + 1):
            out[layer - 1, idx] = pool(record.kept_states[layer], batch["attention_mask"], pooling).float().cpu().numpy()
    return out
