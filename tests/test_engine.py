"""The engine does exactly what it claims, on tiny random Llama models: the empty plan is plain
transformers bit for bit, each row runs exactly its plan, a mixed batch gives each row what it gets
alone, cached = uncached, and the cache holds only the rows that read it."""
import pytest
import torch

from ais.decoding.greedy import generate, prefill
from ais.model.engine import Engine, EngineError, Record
from ais.model.plan import NO_SKIP, PlanError, SkipPlan
from ais.routing.embedding import pivot_hidden, router_embedding
from conftest import left_padded, tiny_llama

ROWS = [[1, 5, 9, 14, 22, 7], [1, 30, 4], [1, 8, 8, 8, 61, 3, 12, 40, 2 + 40]]
PLANS = [
    NO_SKIP,
    SkipPlan.make(hard=[2]),
    SkipPlan.make(hard=[1, 4, 5]),
    SkipPlan.make(soft={3: 0.5}),
    SkipPlan.make(hard=[5], soft={2: 0.7, 3: 0.3}),
    SkipPlan.make(attention=[2, 3], mlp=[4]),
    SkipPlan.make(fill=[3, 4]),
]


def positions(batch):
    pos = batch["attention_mask"].cumsum(-1) - 1
    return pos.masked_fill(batch["attention_mask"] == 0, 1)


def plain_logits(model, batch):
    with torch.inference_mode():
        return model(**batch, position_ids=positions(batch), use_cache=False).logits


def logits(engine, batch, plans=None):
    with torch.inference_mode():
        return engine.head(engine.forward(batch["input_ids"], batch["attention_mask"], plans))


def uncached_greedy(engine, batch, plans, n):
    ids, mask, out = batch["input_ids"], batch["attention_mask"], []
    for _ in range(n):
        nxt = logits(engine, {"input_ids": ids, "attention_mask": mask}, plans)[:, -1].argmax(-1)
        out.append(nxt)
        ids, mask = torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1)


def test_the_empty_plan_is_plain_transformers_bit_for_bit(tiny):
    engine, batch = Engine(tiny), left_padded(ROWS)
    assert torch.equal(logits(engine, batch), plain_logits(tiny, batch))
    assert torch.equal(logits(engine, batch, [NO_SKIP] * 3), plain_logits(tiny, batch))
    with torch.inference_mode():
        expected = tiny.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=0, top_p=None, top_k=None,
                                 temperature=None)[:, batch["input_ids"].shape[1]:]
    assert torch.equal(generate(engine, batch, 8), expected)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
def test_cached_generation_equals_uncached_on_a_padded_batch(tiny64, plan):
    engine, batch = Engine(tiny64), left_padded(ROWS)
    cached = generate(engine, batch, 10, [plan] * 3)
    assert cached.shape == (3, 10)
    assert torch.equal(cached, uncached_greedy(engine, batch, [plan] * 3, 10))


def test_a_mixed_batch_gives_each_row_what_it_gets_alone(tiny64):
    engine, batch = Engine(tiny64), left_padded(ROWS)
    plans = [PLANS[2], PLANS[5], PLANS[4]]
    together = generate(engine, batch, 10, plans)
    assert torch.equal(together, uncached_greedy(engine, batch, plans, 10))
    for i, (row, plan) in enumerate(zip(ROWS, plans)):
        alone = generate(engine, left_padded([row]), 10, [plan])
        assert torch.equal(together[i], alone[0])
        # the logits agree to float64 rounding: a row's GEMMs have other shapes in a batch (MKL rounds by shape)
        torch.testing.assert_close(logits(engine, batch, plans)[i, -1], logits(engine, left_padded([row]), [plan])[0, -1],
                                   rtol=0, atol=1e-12)


def test_plans_change_the_output(tiny64):
    engine, batch = Engine(tiny64), left_padded(ROWS)
    outputs = [logits(engine, batch, [p] * 3)[:, -1] for p in PLANS]
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not torch.allclose(outputs[i], outputs[j]), (PLANS[i], PLANS[j])


def test_each_row_runs_only_its_own_layers_and_blocks(tiny):
    calls = []
    for idx, layer in enumerate(tiny.model.layers):
        layer.self_attn.register_forward_hook(lambda m, a, o, idx=idx: calls.append(("attention", idx, a[0].shape[0]
                                                                                      if a else o[0].shape[0])))
        layer.mlp.register_forward_hook(lambda m, a, o, idx=idx: calls.append(("mlp", idx, a[0].shape[0])))
    plans = [SkipPlan.make(hard=[2, 4]), SkipPlan.make(hard=[2], attention=[3]), SkipPlan.make(hard=[2], mlp=[5])]
    logits(Engine(tiny), left_padded(ROWS), plans)
    rows = {(kind, i): n for kind, i, n in calls}
    assert ("attention", 2) not in rows and ("mlp", 2) not in rows        # no row runs layer 2: it costs nothing
    assert rows[("attention", 4)] == 2 and rows[("mlp", 4)] == 2          # row 0 skips layer 4
    assert rows[("attention", 3)] == 2 and rows[("mlp", 3)] == 3          # row 1 skips layer 3's attention only
    assert rows[("attention", 5)] == 3 and rows[("mlp", 5)] == 2          # row 2 skips layer 5's MLP only
    assert rows[("attention", 0)] == 3


def test_hard_skip_equals_the_model_without_those_layers(tiny64):
    """Bypassing a layer is the same as deleting it from the stack (an independent check)."""
    batch = left_padded(ROWS)
    skipped = logits(Engine(tiny64), batch, [SkipPlan.make(hard=[2, 4])] * 3)
    full_layers = tiny64.model.layers
    tiny64.model.layers = torch.nn.ModuleList([l for i, l in enumerate(full_layers) if i not in (2, 4)])
    tiny64.config.num_hidden_layers = 4
    try:
        reference = plain_logits(tiny64, batch)
    finally:
        tiny64.model.layers = full_layers
        tiny64.config.num_hidden_layers = 6
    assert torch.equal(skipped, reference)


def test_skipping_a_block_equals_zeroing_its_output(tiny64):
    """Skipping an attention (MLP) block is a model whose block writes zeros (its output projection zeroed)."""
    batch = left_padded(ROWS)
    skipped = logits(Engine(tiny64), batch, [SkipPlan.make(attention=[2], mlp=[4])] * 3)
    zeroed = tiny_llama(dtype=torch.float64)
    with torch.no_grad():
        zeroed.model.layers[2].self_attn.o_proj.weight.zero_()
        zeroed.model.layers[4].mlp.down_proj.weight.zero_()
    torch.testing.assert_close(skipped, plain_logits(zeroed, batch), rtol=0, atol=1e-12)


def test_soft_skip_limits(tiny64):
    engine, batch = Engine(tiny64), left_padded(ROWS)
    full = logits(engine, batch)
    hard = logits(engine, batch, [SkipPlan.make(hard=[2, 3])] * 3)
    near_one = logits(engine, batch, [SkipPlan.soft_of([2, 3], 1 - 1e-9)] * 3)
    near_zero = logits(engine, batch, [SkipPlan.soft_of([2, 3], 1e-9)] * 3)
    torch.testing.assert_close(near_one, full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(near_zero, hard, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(full, hard, atol=1e-3)


def test_a_filled_layer_writes_the_keys_and_values_the_layer_writes(tiny64):
    """A filled layer passes its input on, yet its cache holds what running it would have written."""
    engine, batch = Engine(tiny64), left_padded(ROWS)
    ran, _ = prefill(engine, batch)
    filled, _ = prefill(engine, batch, [SkipPlan.make(fill=[3])] * 3)
    torch.testing.assert_close(filled.cache.keys[3], ran.cache.keys[3], rtol=0, atol=1e-12)
    torch.testing.assert_close(filled.cache.values[3], ran.cache.values[3], rtol=0, atol=1e-12)
    assert not torch.allclose(filled.cache.keys[4], ran.cache.keys[4])  # later layers saw the skip


def test_the_cache_holds_only_the_rows_that_read_each_layer(tiny):
    engine, batch = Engine(tiny), left_padded(ROWS)
    flight, _ = prefill(engine, batch, [SkipPlan.make(hard=[3]), NO_SKIP, SkipPlan.make(attention=[3], mlp=[4])])
    assert flight.cache.holds(3) == [1] and flight.cache.keys[3].shape[0] == 1
    assert flight.cache.holds(4) == [0, 1, 2]
    decoded, _ = prefill(engine, batch, None, [SkipPlan.make(hard=[3]), NO_SKIP, NO_SKIP])
    assert decoded.cache.holds(3) == [1, 2]  # the decode-time plan drops row 0 from layer 3 after a full prefill


def test_a_plan_cannot_take_back_a_layer_it_dropped(tiny):
    engine, batch = Engine(tiny), left_padded(ROWS)
    flight, logits_ = prefill(engine, batch, [SkipPlan.make(hard=[3])] * 3)
    with pytest.raises(EngineError, match="holds no keys and values for them"):
        flight.run(*flight.feed(logits_.argmax(-1)[:, None]), plans=[NO_SKIP] * 3)
    flight, logits_ = prefill(engine, batch)
    with pytest.raises(EngineError, match="set their plans with Batch.set_plans"):
        flight.run(*flight.feed(logits_.argmax(-1)[:, None]), plans=[SkipPlan.make(hard=[3])] * 3)


def test_records_states_influence_and_outputs(tiny64):
    engine, batch = Engine(tiny64), left_padded(ROWS)
    record = Record(states=True, influence=True, outputs=(1,))
    with torch.inference_mode():
        engine.forward(batch["input_ids"], batch["attention_mask"], [SkipPlan.make(hard=[2])] * 3, record=record)
        reference = tiny64(**batch, position_ids=positions(batch), output_hidden_states=True).hidden_states
    assert len(record.kept_states) == 7 and torch.equal(record.kept_states[1], reference[1])
    assert torch.equal(record.kept_outputs[1], reference[2])
    influence = record.influence_matrix(3, 6, "cpu")
    assert torch.isnan(influence[:, 2]).all() and torch.isfinite(influence[:, [0, 1, 3, 4, 5]]).all()


@pytest.mark.parametrize("hard,soft,message", [
    ([7], None, "layer index 7 is out of range"),
    ([-1], None, "layer index -1 is out of range"),
    ([0], None, "layer 0 cannot be skipped"),
    (None, {0: 0.5}, "layer 0 cannot be skipped"),
    ([2], {2: 0.5}, "both hard- and soft-skipped"),
    (None, {3: 1.0}, "must be in (0, 1)"),
    (None, {3: 0.0}, "must be in (0, 1)"),
    (None, {3: 1.7}, "must be in (0, 1)"),
    (None, {3: float("nan")}, "must be in (0, 1)"),
])
def test_invalid_plans_raise_clear_errors(tiny, hard, soft, message):
    plan = SkipPlan.make(hard=hard or (), soft=soft)
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        logits(Engine(tiny), left_padded(ROWS), [plan] * 3)


@pytest.mark.parametrize("kwargs,message", [
    ({"hard": ["2"]}, "layer index '2' is not an integer"),
    ({"hard": [2.0]}, "layer index 2.0 is not an integer"),
    ({"soft": {3: "0.5"}}, "alpha for layer 3 is '0.5', not a number"),
    ({"attention": [2], "mlp": [2], "hard": [2]}, None),
])
def test_plan_types_are_checked(kwargs, message):
    if message is None:
        with pytest.raises(PlanError, match="both"):
            SkipPlan.make(**kwargs).validate(6)
        return
    with pytest.raises(PlanError, match=message):
        SkipPlan.make(**kwargs)


@pytest.mark.parametrize("pivot", [1, 2, 5, 6])
def test_router_embedding_equals_reference_hidden_state(tiny, pivot):
    batch = left_padded(ROWS)
    with torch.inference_mode():
        reference = tiny(**batch, position_ids=positions(batch), output_hidden_states=True).hidden_states[pivot]
    hidden = pivot_hidden(tiny, batch, pivot)
    if pivot < 6:  # hidden_states[-1] is after the final norm; earlier entries are raw layer outputs
        assert torch.equal(hidden, reference)
    last = router_embedding(tiny, batch, pivot, "last")
    assert torch.equal(last, hidden[:, -1, :].float())
    mean = router_embedding(tiny, batch, pivot, "mean")
    torch.testing.assert_close(mean[1], hidden[1, -3:, :].mean(0))  # row 1 has 3 real tokens, left-padded


def test_router_does_not_run_layers_past_the_pivot(tiny):
    calls = []
    for idx, layer in enumerate(tiny.model.layers):
        layer.register_forward_hook(lambda m, a, o, idx=idx: calls.append(idx))
    router_embedding(tiny, left_padded(ROWS), pivot=2)
    assert calls == [0, 1]


def test_router_rejects_bad_pivot(tiny):
    for bad in (0, 7, "2", 2.5):
        with pytest.raises(ValueError, match="router.pivot_layer"):
            router_embedding(tiny, left_padded(ROWS), pivot=bad)


def test_whole_layer_plans_run_on_a_model_dispatched_with_a_device_map(tmp_path):
    """accelerate's dispatch (some layers offloaded to disk, the CPU stand-in for a second device) hooks
    each layer's forward; whole-layer plans (hard, soft) run through those hooks, row by row."""
    from accelerate import dispatch_model

    reference, dispatched = tiny_llama(dtype=torch.float32, seed=9), tiny_llama(dtype=torch.float32, seed=9)
    placement = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                 **{f"model.layers.{i}": ("disk" if i in (2, 3, 5) else "cpu") for i in range(6)}}
    dispatch_model(dispatched, device_map=placement, offload_dir=str(tmp_path))
    batch = left_padded(ROWS)
    mixed = [PLANS[1], PLANS[3], PLANS[4]]
    for plans in ([NO_SKIP] * 3, [PLANS[2]] * 3, mixed):
        assert torch.equal(generate(Engine(dispatched), batch, 6, plans), generate(Engine(reference), batch, 6, plans))
    with pytest.raises(EngineError, match="dispatched over several"):
        generate(Engine(dispatched), batch, 2, [PLANS[5]] * 3)


def test_a_checkpoint_loaded_with_a_device_map_still_skips(tmp_path):
    """`model.device: map` (accelerate's device_map="auto"); with too little memory for the whole model
    the later layers go to disk, the way a model larger than one device would spread out."""
    import json

    from ais.model.loading import load_model
    from conftest import tiny_tokenizer

    reference = tiny_llama(dtype=torch.float32, seed=10)
    reference.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "model/model_card.json").write_text(json.dumps({"source": "test"}))
    mapped, _ = load_model(tmp_path / "model", "float32", "map", max_memory={"cpu": "60KB"})
    assert "disk" in set(getattr(mapped, "hf_device_map", {}).values())
    batch = left_padded(ROWS)
    for plan in (NO_SKIP, SkipPlan.make(hard=[2, 5]), SkipPlan.make(soft={3: 0.5})):
        assert torch.equal(generate(Engine(mapped), batch, 5, [plan] * 3), generate(Engine(reference), batch, 5, [plan] * 3))
