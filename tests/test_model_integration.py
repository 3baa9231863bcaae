"""Integration: the real embedded model, materialised as the `model` stage does it."""
import json

import pytest
import torch

from ais.decode import encode_prompts, generate_text, last_token_logits
from ais.model import ModelError, load_model, pick_device, pick_dtype
from ais.router import pivot_hidden
from ais.skip import NO_SKIP, SkipPlan

pytestmark = pytest.mark.integration


def test_materialised_checkpoint_has_card_and_chat_template(embedded_dir, embedded):
    model, tokenizer = embedded
    card = json.loads((embedded_dir / "model_card.json").read_text())
    assert card["n_layers"] == model.config.num_hidden_layers == 30
    assert card["hidden_size"] == 576 and len(card["sha256"]) == 64
    assert (embedded_dir / "model.safetensors").is_file()
    assert "<|im_start|>assistant" in encode_prompts.__globals__["chat_text"](tokenizer, "hi")


def test_greedy_answer_mentions_paris(embedded):
    model, tokenizer = embedded
    reply = generate_text(model, tokenizer, ["What is the capital of France?"], max_new_tokens=24)[0]
    assert "Paris" in reply, reply


def test_no_skip_is_plain_model_and_skip_changes_logits(embedded):
    model, tokenizer = embedded
    batch = encode_prompts(tokenizer, ["Name three colours.", "What is 2 + 2?"], model.device)
    with torch.inference_mode():
        plain = model(**batch).logits[:, -1, :].float()
    assert torch.equal(last_token_logits(model, batch, NO_SKIP), plain)
    assert not torch.allclose(last_token_logits(model, batch, SkipPlan.make(hard=[12, 20])), plain)


def test_router_hidden_matches_output_hidden_states(embedded):
    model, tokenizer = embedded
    batch = encode_prompts(tokenizer, ["Summarise this: the cat sat on the mat."], model.device)
    with torch.inference_mode():
        reference = model(**batch, output_hidden_states=True).hidden_states[10]
    assert torch.equal(pivot_hidden(model, batch, 10), reference)


def test_bad_model_settings_fail_clearly(tmp_path):
    with pytest.raises(ModelError, match="run `dvc repro model` first"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="model.dtype='int8'"):
        pick_dtype("int8", pick_device("cpu"))
    with pytest.raises(ModelError, match="model.device='tpu'"):
        pick_device("tpu")


def test_model_source_that_does_not_exist(tmp_path):
    from ais.model import materialise

    with pytest.raises(ModelError, match="model.source='/no/such/checkpoint' does not exist"):
        materialise("/no/such/checkpoint", tmp_path / "model")
    assert not (tmp_path / "model").exists()
