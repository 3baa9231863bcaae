"""Running a model's decoder layers by hand: the keyword arguments LlamaModel.forward passes to
each layer, and a slice of the layers. The routed decoder continues from the router's layers, the
speculative verify from the draft's, and the importance search from an ablated layer."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers.masking_utils import create_causal_mask

from ais.model.gating import decoder_layers


def layer_kwargs(model, hidden, cache, attention_mask=None, layer: int = 0) -> dict:
    """The keyword arguments LlamaModel.forward passes to each decoder layer, for `hidden` appended
    after what cache layer `layer` holds (layers may hold different lengths while drafting)."""
    past = cache.get_seq_length(layer) if cache is not None else 0
    position_ids = (torch.arange(hidden.shape[1], device=hidden.device) + past).unsqueeze(0)
    mask = create_causal_mask(config=model.model.config, inputs_embeds=hidden, attention_mask=attention_mask,
                              past_key_values=cache, position_ids=position_ids, layer_idx=layer)
    return {"attention_mask": mask, "position_ids": position_ids, "past_key_values": cache,
            "use_cache": cache is not None,
            "position_embeddings": model.model.rotary_emb(hidden, position_ids=position_ids)}


def layer_context(model, batch: dict, cache=None):
    """Embeddings and the per-layer keyword arguments LlamaModel.forward would build."""
    embeds = model.model.embed_tokens(batch["input_ids"])
    return embeds, layer_kwargs(model, embeds, cache, batch["attention_mask"])


def run_layers(model, hidden, ctx, start: int, stop: int):
    """Decoder layers start..stop-1 on `hidden` (under whatever skip plan is set)."""
    for layer in decoder_layers(model)[start:stop]:
        hidden = layer(hidden, **ctx)
    return hidden


@contextmanager
def recording_influence(model, attention_mask: torch.Tensor):
    """While a forward runs, ShortGPT's Block Influence of every decoder layer per row: 1 - cos(layer
    input, layer output), averaged over the row's real tokens (`attention_mask`). Yields a dict
    layer -> tensor (B), filled as the layers run (a layer that did not run is absent)."""
    mask = attention_mask
    values: dict[int, torch.Tensor] = {}

    def hook(idx):
        def record(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            precision = torch.promote_types(out.dtype, torch.float32)
            change = 1 - torch.nn.functional.cosine_similarity(args[0].to(precision), out.to(precision), dim=-1)
            weights = mask.to(change.dtype)
            values[idx] = (change * weights).sum(1) / weights.sum(1)
        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(decoder_layers(model))]
    try:
        yield values
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def block_influence(model, batch: dict) -> torch.Tensor:
    """Block Influence per prompt and layer (B x n_layers) from one full forward: a training-free prior
    (higher = the layer changes its input more)."""
    with recording_influence(model, batch["attention_mask"]) as values:
        model.model(**batch, use_cache=False)
    return torch.stack([values[i] for i in range(len(values))], 1)
