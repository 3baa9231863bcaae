"""Forward passes and generation under a skip plan, for batches of chat prompts."""
from __future__ import annotations

import warnings

import torch

from ais.skip import NO_SKIP, SkipPlan, skipping


class PromptError(ValueError):
    """A prompt that cannot be run."""


def check_prompt(prompt) -> str:
    """A non-empty string; bytes must be UTF-8."""
    if isinstance(prompt, bytes):
        try:
            prompt = prompt.decode("utf-8")
        except UnicodeDecodeError as err:
            raise PromptError(f"prompt is not valid UTF-8 text ({err})") from err
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be text, got {type(prompt).__name__}")
    if not prompt.strip():
        raise PromptError("prompt is empty (or only whitespace); give some text")
    return prompt


def chat_text(tokenizer, prompt: str) -> str:
    """The prompt as one user turn of the chat template, ready for the assistant's reply."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": check_prompt(prompt)}], tokenize=False, add_generation_prompt=True
    )


def encode_prompts(tokenizer, prompts: list[str], device, max_length: int | None = None) -> dict:
    """Chat-templated, left-padded batch {input_ids, attention_mask} on `device`.
    A prompt longer than `max_length` tokens keeps its last `max_length` tokens, with a warning."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise PromptError("no prompts given")
    texts = [chat_text(tokenizer, p) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    if max_length is not None and batch["input_ids"].shape[1] > max_length:
        warnings.warn(
            f"a prompt has {batch['input_ids'].shape[1]} tokens, more than the model's context of {max_length}; "
            f"keeping its last {max_length} tokens",
            stacklevel=2,
        )
        batch = {k: v[:, -max_length:] for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


def context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048))


@torch.inference_mode()
def last_token_logits(model, batch: dict, plan: SkipPlan = NO_SKIP) -> torch.Tensor:
    """Next-token logits (B x vocab, float32) at the last position of each left-padded row."""
    with skipping(model, plan):
        out = model(**batch, use_cache=False)
    return out.logits[:, -1, :].float()


@torch.inference_mode()
def generate_ids(model, batch: dict, plan: SkipPlan = NO_SKIP, max_new_tokens: int = 32, use_cache: bool = True,
                 eos_token_id=None) -> torch.Tensor:
    """Greedy continuation token ids (B x new), KV-cached by default; rows that ended are padded."""
    kwargs = {}
    if eos_token_id is not None:
        kwargs["eos_token_id"] = eos_token_id
    with skipping(model, plan):
        out = model.generate(
            **batch, do_sample=False, max_new_tokens=max_new_tokens, use_cache=use_cache,
            pad_token_id=model.generation_config.pad_token_id or 0, top_p=None, top_k=None, temperature=None,
            **kwargs,
        )
    return out[:, batch["input_ids"].shape[1]:]


def generate_text(model, tokenizer, prompts: list[str], plan: SkipPlan = NO_SKIP, max_new_tokens: int = 32) -> list[str]:
    """Greedy replies to chat prompts under `plan`."""
    batch = encode_prompts(tokenizer, prompts, model.device, context_length(model) - max_new_tokens)
    new = generate_ids(model, batch, plan, max_new_tokens, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(new, skip_special_tokens=True)
