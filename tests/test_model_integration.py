"""Integration: the real embedded model, materialised as the `model` stage does it."""
import json

import pytest
import torch

from ais.decoding.greedy import generate, prefill
from ais.device import DeviceError, pick_device, pick_dtype
from ais.model.engine import Engine
from ais.model.loading import ModelError, load_model
from ais.model.plan import NO_SKIP, SkipPlan
from ais.model.prompts import encode_prompts
from ais.routing.embedding import pivot_hidden

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
    batch = encode_prompts(tokenizer, ["What is the capital of France?"], model.device)
    reply = tokenizer.decode(generate(Engine(model), batch, 24, eos_token_id=tokenizer.eos_token_id)[0],
                             skip_special_tokens=True)
    assert "Paris" in reply, reply


def test_no_skip_is_plain_model_and_skip_changes_logits(embedded):
    model, tokenizer = embedded
    batch = encode_prompts(tokenizer, ["Name three colours.", "What is 2 + 2?"], model.device)
    positions = (batch["attention_mask"].cumsum(-1) - 1).masked_fill(batch["attention_mask"] == 0, 1)
    with torch.inference_mode():
        plain = model(**batch, position_ids=positions, logits_to_keep=1).logits[:, -1, :]
    engine = Engine(model)
    assert torch.equal(prefill(engine, batch, [NO_SKIP] * 2)[1], plain)
    assert not torch.allclose(prefill(engine, batch, [SkipPlan.make(hard=[12, 20])] * 2)[1], plain)


def test_a_row_of_a_mixed_batch_gets_the_tokens_it_gets_alone(embedded):
    """The embedded model in float32: rows of different plans in one batch, token for token as alone."""
    model, tokenizer = embedded
    engine = Engine(model)
    prompts = ["Name three colours.", "What is 2 + 2?", "Translate into French: good morning",
               "Write a haiku about the sea."]
    plans = [SkipPlan.make(hard=[12, 20]), NO_SKIP, SkipPlan.make(hard=[14, 26], soft={17: 0.5}),
             SkipPlan.make(attention=[11, 13, 15], mlp=[25])]
    together = generate(engine, encode_prompts(tokenizer, prompts, model.device), 16, plans)
    for i, (prompt, plan) in enumerate(zip(prompts, plans)):
        alone = generate(engine, encode_prompts(tokenizer, [prompt], model.device), 16, [plan])
        assert torch.equal(together[i], alone[0]), prompt


def test_router_hidden_matches_output_hidden_states(embedded):
    model, tokenizer = embedded
    batch = encode_prompts(tokenizer, ["Summarise this: the cat sat on the mat."], model.device)
    with torch.inference_mode():
        reference = model(**batch, output_hidden_states=True).hidden_states[10]  # one prompt: no padding
    assert torch.equal(pivot_hidden(model, batch, 10), reference)


def test_bad_model_settings_fail_clearly(tmp_path):
    with pytest.raises(ModelError, match="run `dvc repro model` first"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(DeviceError, match="model.dtype='int8'"):
        pick_dtype("int8", pick_device("cpu"))
    with pytest.raises(DeviceError, match="model.device='tpu'"):
        pick_device("tpu")


def test_model_source_that_does_not_exist(tmp_path):
    from ais.model.loading import materialise

    with pytest.raises(ModelError, match="model.source='/no/such/checkpoint' does not exist"):
        materialise("/no/such/checkpoint", tmp_path / "model")
    assert not (tmp_path / "model").exists()


LOSSLESS_PROMPTS = ["Repeat this sentence exactly: the quick brown fox jumps over the lazy dog near the river bank.",
                    "What is the capital of France? Answer in one word.",
                    "Write a short story about a lighthouse keeper."]


def test_speculative_decoding_gives_the_greedy_tokens_of_the_embedded_model(embedded):
    """Every drafter (CLaSp's dynamic skip set included), float32: the tokens transformers' greedy `generate` gives, up to and including
    the end-of-sequence token or max_new_tokens; drafts are both accepted and rejected."""
    from ais.model.prompts import chat_text
    from ais.decoding.speculative import ClaspDraft, NoDraft, PromptLookup, RoutedDraft, speculative_generate

    model, tokenizer = embedded
    plan = SkipPlan.make(hard=[12, 16, 19, 22, 25, 27])
    drafters = {"none": NoDraft, "lookup": lambda: PromptLookup(3), "routed": lambda: RoutedDraft(plan, 0.8),
                "routed_fixed_no_prefix": lambda: RoutedDraft(plan, 0.8, adaptive=False, share_prefix=False),
                "clasp": lambda: ClaspDraft(6, range(10, 30), 0.8)}
    totals = {name: [0, 0] for name in drafters}
    ended = 0
    for prompt in LOSSLESS_PROMPTS:
        ids = tokenizer(chat_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        with torch.inference_mode():
            expected = model.generate(**batch, max_new_tokens=24, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=0, top_p=None, top_k=None, temperature=None)[0, len(ids):].tolist()
        if tokenizer.eos_token_id in expected:
            expected = expected[:expected.index(tokenizer.eos_token_id) + 1]
            ended += 1
        for name, make in drafters.items():
            tokens, stats = speculative_generate(Engine(model), ids, 24, make(), gamma=4,
                                                 eos_token_id=tokenizer.eos_token_id)
            assert tokens == expected, (name, prompt)
            totals[name][0] += stats.drafted
            totals[name][1] += stats.accepted
    assert ended >= 1  # the end-of-sequence boundary was crossed at least once
    for name in ("lookup", "routed", "clasp"):
        drafted, accepted = totals[name]
        assert 0 < accepted < drafted, (name, totals[name])  # some drafts accepted, some rejected
