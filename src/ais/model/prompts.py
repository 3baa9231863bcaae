"""Prompts as the model sees them: checked text, one chat-template user turn, left-padded batches."""
from __future__ import annotations

import warnings



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


def chat_ids(tokenizer, prompt: str, limit: int) -> list[int]:
    """Token ids of one chat prompt (batch of one, no padding), its last `limit` tokens."""
    ids = tokenizer(chat_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    return ids[-limit:]
