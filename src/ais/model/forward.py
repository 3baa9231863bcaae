"""Running a model's decoder layers by hand: the keyword arguments LlamaModel.forward passes to
each layer, and a slice of the layers. The routed decoder continues from the router's layers, the
speculative verify from the draft's, and the importance search from an ablated layer."""
from __future__ import annotations

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
