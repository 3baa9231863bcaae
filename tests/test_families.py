"""Every supported family (Llama, Qwen2, Mistral, Qwen3) gives the same guarantees on a tiny random
model built from a config: the empty plan is the plain model bit for bit; cached = uncached under hard
and soft plans on padded batches; routed generation, speculative decoding and the per-token mode give
the tokens they must. Other families, and sliding-window attention, are refused with the reason."""
import pytest
import torch

from ais.decoding.dynamic import NEVER, DepthGate, dynamic_generate
from ais.decoding.greedy import generate_ids, next_token_logits, plain_generate
from ais.decoding.speculative import ClaspDraft, NoDraft, PromptLookup, RoutedDraft, speculative_generate
from ais.model.gating import NO_SKIP, SkipPlan
from ais.model.loading import ModelError, check_supported
from ais.model.prompts import encode_prompts
from conftest import FAMILIES, left_padded, tiny_model, tiny_routed_decoder, tiny_tokenizer

ROWS = [[1, 5, 9, 14, 22, 7], [1, 30, 4], [1, 8, 8, 8, 61, 3, 12, 40, 42]]
PLANS = [SkipPlan.make(hard=[2]), SkipPlan.make(hard=[1, 4, 5]), SkipPlan.make(soft={3: 0.5}),
         SkipPlan.make(hard=[5], soft={2: 0.7, 3: 0.3})]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_empty_plan_is_the_plain_model_bit_for_bit(family):
    model = tiny_model(family, seed=1)
    check_supported(model)
    batch = left_padded(ROWS)
    with torch.inference_mode():
        reference = model(**batch, logits_to_keep=1).logits[:, -1, :].float()
    assert torch.equal(next_token_logits(model, batch, NO_SKIP), reference)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
def test_cached_equals_uncached_under_hard_and_soft_plans_on_padded_batches(family, plan):
    model = tiny_model(family, dtype=torch.float64, seed=2)
    batch = left_padded(ROWS)
    cached = generate_ids(model, batch, plan, max_new_tokens=8, use_cache=True)
    assert torch.equal(cached, generate_ids(model, batch, plan, max_new_tokens=8, use_cache=False))


@pytest.mark.parametrize("family", FAMILIES)
def test_speculative_decoding_gives_the_greedy_tokens(family):
    model = tiny_model(family, dtype=torch.float64, seed=3)
    for prompt in ROWS:
        greedy = plain_generate(model, left_padded([prompt]), 14)[0].tolist()
        for drafter in (NoDraft(), PromptLookup(2), RoutedDraft(SkipPlan.make(hard=[3, 4]), 0.3),
                        ClaspDraft(2, [2, 3, 4, 5], 0.3)):
            assert speculative_generate(model, prompt, 14, drafter, gamma=4)[0] == greedy, drafter.name


@pytest.mark.parametrize("family", FAMILIES)
def test_the_per_token_mode_is_greedy_when_the_gate_never_fires_and_keeps_its_cache_complete(family):
    model = tiny_model(family, dtype=torch.float64, seed=4)
    batch = left_padded(ROWS)
    assert torch.equal(dynamic_generate(model, batch, 8, NEVER)[0], plain_generate(model, batch, 8))
    gate = DepthGate(threshold=0.5, min_layer=2)
    ids, depth = dynamic_generate(model, {"input_ids": torch.tensor([ROWS[0]]),
                                          "attention_mask": torch.ones(1, len(ROWS[0]), dtype=torch.long)}, 8, gate)
    from test_dynamic import _uncached_dynamic  # the same decoding recomputed without a cache

    tokens, depths = _uncached_dynamic(model, ROWS[0], 8, gate)
    assert ids[0].tolist() == tokens and depth[0].tolist() == depths and min(depths[1:]) < 6  # the gate fired


@pytest.mark.parametrize("family", FAMILIES)
def test_routed_generation_follows_each_rows_plan(family):
    model, tok = tiny_model(family, dtype=torch.float64, seed=5), tiny_tokenizer()
    contexts = ["what is the capital of france", "write a story", "sum two plus two", "write code"]
    decoder = tiny_routed_decoder(model, tok, contexts, [0, 1, 0, 1])
    batch = encode_prompts(tok, contexts, "cpu")
    out, routes = decoder.generate(batch, 6)
    for i, route in enumerate(routes):
        assert torch.equal(out[i], generate_ids(model, {k: v[i:i + 1] for k, v in batch.items()}, route.plan, 6)[0])


def test_other_families_and_sliding_windows_are_refused_with_the_reason():
    from transformers import Gemma3TextConfig, Gemma3ForCausalLM, Qwen2Config, Qwen2ForCausalLM

    gemma = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    with pytest.raises(ModelError, match="model_type='gemma3_text' is not supported.*sliding-window layers"):
        check_supported(gemma)
    windowed = Qwen2ForCausalLM(Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                            sliding_window=16, max_window_layers=0))
    with pytest.raises(ModelError, match="sliding-window attention"):
        check_supported(windowed)
