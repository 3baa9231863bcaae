"""Every supported family (Llama, Qwen2, Mistral, Qwen3) gives the same guarantees on a tiny random
model built from a config: the empty plan is the plain model bit for bit; cached = uncached under every
kind of action on padded batches; a row of a mixed batch gets the tokens it gets alone (float32 and
float64); routed generation, speculative decoding and the per-token mode give the tokens they must.
Other families, and sliding-window attention, are refused with the reason."""
import pytest
import torch

from ais.model.plan import NEVER, DepthGate
from ais.decoding.greedy import decode, generate, prefill
from ais.decoding.speculative import ClaspDraft, NoDraft, PromptLookup, RoutedDraft, speculative_generate
from ais.model.engine import Engine
from ais.model.loading import ModelError, check_supported
from ais.model.plan import NO_SKIP, SkipPlan
from ais.model.prompts import encode_prompts
from conftest import FAMILIES, left_padded, tiny_model, tiny_routed_decoder, tiny_tokenizer

ROWS = [[1, 5, 9, 14, 22, 7], [1, 30, 4], [1, 8, 8, 8, 61, 3, 12, 40, 42]]
PLANS = [SkipPlan.make(hard=[2]), SkipPlan.make(hard=[1, 4, 5]), SkipPlan.make(soft={3: 0.5}),
         SkipPlan.make(hard=[5], soft={2: 0.7, 3: 0.3}), SkipPlan.make(attention=[2, 4], mlp=[3]),
         SkipPlan.make(fill=[3, 5])]


def _positions(batch):
    pos = batch["attention_mask"].cumsum(-1) - 1
    return pos.masked_fill(batch["attention_mask"] == 0, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_empty_plan_is_the_plain_model_bit_for_bit(family):
    model = tiny_model(family, seed=1)
    check_supported(model)
    batch = left_padded(ROWS)
    with torch.inference_mode():
        reference = model(**batch, position_ids=_positions(batch), logits_to_keep=1).logits[:, -1, :]
        expected = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=0, top_p=None, top_k=None,
                                  temperature=None)[:, batch["input_ids"].shape[1]:]
    _, logits = prefill(Engine(model), batch)
    assert torch.equal(logits, reference)
    assert torch.equal(generate(Engine(model), batch, 6, eos_token_id=2), expected)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
def test_cached_equals_uncached_on_padded_batches(family, plan):
    model = tiny_model(family, dtype=torch.float64, seed=2)
    engine, batch = Engine(model), left_padded(ROWS)
    cached = generate(engine, batch, 8, [plan] * 3)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for step in range(8):
        with torch.inference_mode():
            nxt = engine.head(engine.forward(ids, mask, [plan] * 3))[:, -1].argmax(-1)
        assert torch.equal(nxt, cached[:, step])
        ids, mask = torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_a_row_of_a_mixed_batch_gets_what_the_same_request_gets_alone(family, dtype):
    model = tiny_model(family, dtype=dtype, seed=6)
    engine = Engine(model)
    rows, plans = ROWS * 2, PLANS
    together = generate(engine, left_padded(rows), 10, plans)
    for i, (row, plan) in enumerate(zip(rows, plans)):
        assert torch.equal(together[i], generate(engine, left_padded([row]), 10, [plan])[0]), (i, plan.describe())


@pytest.mark.parametrize("family", FAMILIES)
def test_speculative_decoding_gives_the_greedy_tokens(family):
    model = tiny_model(family, dtype=torch.float64, seed=3)
    engine = Engine(model)
    for prompt in ROWS:
        greedy = generate(engine, left_padded([prompt]), 14)[0].tolist()
        for drafter in (NoDraft(), PromptLookup(2), RoutedDraft(SkipPlan.make(hard=[3, 4]), 0.3),
                        ClaspDraft(2, [2, 3, 4, 5], 0.3)):
            assert speculative_generate(engine, prompt, 14, drafter, gamma=4)[0] == greedy, drafter.name


@pytest.mark.parametrize("family", FAMILIES)
def test_the_per_token_mode_is_greedy_when_the_gate_never_fires_and_keeps_its_cache_complete(family):
    model = tiny_model(family, dtype=torch.float64, seed=4)
    engine, batch = Engine(model), left_padded(ROWS)
    flight, logits = prefill(engine, batch)
    assert torch.equal(decode(flight, logits.argmax(-1), 8, gate=NEVER)[0], generate(engine, batch, 8))
    gate = DepthGate(threshold=0.5, min_layer=2)
    single = left_padded([ROWS[0]])
    flight, logits = prefill(engine, single)
    ids, depth = decode(flight, logits.argmax(-1), 8, gate=gate)
    from test_dynamic import _uncached_dynamic  # the same decoding recomputed without a cache

    tokens, depths = _uncached_dynamic(model, ROWS[0], 8, gate)
    assert ids[0].tolist() == tokens and depth[0].tolist() == depths and min(depths[1:]) < 6  # the gate fired


@pytest.mark.parametrize("family", FAMILIES)
def test_routed_generation_follows_each_rows_plan(family):
    model, tok = tiny_model(family, dtype=torch.float64, seed=5), tiny_tokenizer()
    contexts = ["what is the capital of france", "write a story", "sum two plus two", "write code"]
    decoder = tiny_routed_decoder(model, tok, contexts, [0, 1, 0, 1])
    batch = encode_prompts(tok, contexts, "cpu")
    out, routes, _ = decoder.generate(batch, 6)
    assert len({r.plan for r in routes}) == 2
    for i, route in enumerate(routes):
        alone = generate(Engine(model), encode_prompts(tok, [contexts[i]], "cpu"), 6, [route.plan])
        assert torch.equal(out[i], alone[0])


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


def test_no_skip_is_none_of_the_actions():
    assert NO_SKIP.is_empty() and not PLANS[4].is_empty() and PLANS[4].blocks == 3
