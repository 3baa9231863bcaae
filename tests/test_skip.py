"""The skipper does exactly what it claims, on tiny random Llama models."""
import pytest
import torch

from ais.decoding.greedy import generate_ids, next_token_logits
from ais.routing.embedding import pivot_hidden, router_embedding
from ais.model.gating import NO_SKIP, PlanError, SkipPlan, clear_plan, current_plan, set_plan, skipping
from conftest import left_padded, tiny_llama

ROWS = [[1, 5, 9, 14, 22, 7], [1, 30, 4], [1, 8, 8, 8, 61, 3, 12, 40, 2 + 40]]
PLANS = [
    NO_SKIP,
    SkipPlan.make(hard=[2]),
    SkipPlan.make(hard=[1, 4, 5]),
    SkipPlan.make(soft={3: 0.5}),
    SkipPlan.make(hard=[5], soft={2: 0.7, 3: 0.3}),
]


def plain_logits(model, batch):
    with torch.inference_mode():
        return model(**batch, logits_to_keep=1).logits[:, -1, :].float()


def test_empty_plan_is_bit_identical_to_plain_transformers(tiny):
    batch = left_padded(ROWS)
    reference = plain_logits(tiny, batch)
    assert torch.equal(next_token_logits(tiny, batch, NO_SKIP), reference)
    # and after a plan was applied and removed
    with skipping(tiny, SkipPlan.make(hard=[1, 2], soft={3: 0.4})):
        assert not torch.equal(next_token_logits(tiny, batch, current_plan(tiny)), reference)
    assert torch.equal(plain_logits(tiny, batch), reference)


def test_restoring_leaves_model_exactly_as_loaded(tiny):
    before_state = {k: v.clone() for k, v in tiny.state_dict().items()}
    before_attrs = [sorted(layer.__dict__) for layer in tiny.model.layers]
    set_plan(tiny, SkipPlan.make(hard=[1, 3], soft={2: 0.5}))
    clear_plan(tiny)
    assert [sorted(layer.__dict__) for layer in tiny.model.layers] == before_attrs
    assert all(torch.equal(v, before_state[k]) for k, v in tiny.state_dict().items())


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
def test_cached_generation_equals_uncached_on_padded_batch(tiny64, plan):
    batch = left_padded(ROWS)
    cached = generate_ids(tiny64, batch, plan, max_new_tokens=12, use_cache=True, eos_token_id=-1)
    uncached = generate_ids(tiny64, batch, plan, max_new_tokens=12, use_cache=False, eos_token_id=-1)
    assert cached.shape == (3, 12)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
def test_batched_forward_equals_per_prompt_forward(tiny64, plan):
    batched = next_token_logits(tiny64, left_padded(ROWS), plan)
    for i, row in enumerate(ROWS):
        single = next_token_logits(tiny64, left_padded([row]), plan)
        # rotary cos/sin are computed in float32 and padding shifts positions: agreement to ~1e-6
        torch.testing.assert_close(batched[i], single[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("plan", PLANS[1:], ids=lambda p: p.describe())
def test_batched_generation_equals_per_prompt_generation(tiny64, plan):
    batched = generate_ids(tiny64, left_padded(ROWS), plan, max_new_tokens=8, eos_token_id=-1)
    for i, row in enumerate(ROWS):
        single = generate_ids(tiny64, left_padded([row]), plan, max_new_tokens=8, eos_token_id=-1)
        assert torch.equal(batched[i], single[0])


def test_plans_change_the_output(tiny64):
    batch = left_padded(ROWS)
    outputs = [next_token_logits(tiny64, batch, p) for p in PLANS]
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not torch.allclose(outputs[i], outputs[j]), (PLANS[i], PLANS[j])


def test_hard_skipped_layer_never_runs(tiny):
    calls = []
    for idx, layer in enumerate(tiny.model.layers):
        for sub in (layer.self_attn, layer.mlp):
            sub.register_forward_hook(lambda m, a, o, idx=idx: calls.append(idx))
    batch = left_padded(ROWS)
    next_token_logits(tiny, batch, SkipPlan.make(hard=[2, 4]))
    generate_ids(tiny, batch, SkipPlan.make(hard=[2, 4]), max_new_tokens=3)
    assert calls and not {2, 4} & set(calls)
    assert {0, 1, 3, 5} <= set(calls)


def test_hard_skip_equals_model_without_those_layers(tiny64):
    """Bypassing a layer is the same as deleting it from the stack (a second, independent check)."""
    batch = left_padded(ROWS)
    skipped = next_token_logits(tiny64, batch, SkipPlan.make(hard=[2, 4]))
    full_layers = tiny64.model.layers
    tiny64.model.layers = torch.nn.ModuleList([l for i, l in enumerate(full_layers) if i not in (2, 4)])
    tiny64.config.num_hidden_layers = 4
    try:
        with torch.inference_mode():  # no cache: the kept layers keep their original layer_idx
            reference = tiny64(**batch, use_cache=False).logits[:, -1, :].float()
    finally:
        tiny64.model.layers = full_layers
        tiny64.config.num_hidden_layers = 6
    assert torch.equal(skipped, reference)


def test_soft_skip_limits(tiny64):
    batch = left_padded(ROWS)
    full = next_token_logits(tiny64, batch)
    hard = next_token_logits(tiny64, batch, SkipPlan.make(hard=[2, 3]))
    near_one = next_token_logits(tiny64, batch, SkipPlan.soft_of([2, 3], 1 - 1e-9))
    near_zero = next_token_logits(tiny64, batch, SkipPlan.soft_of([2, 3], 1e-9))
    torch.testing.assert_close(near_one, full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(near_zero, hard, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(full, hard, atol=1e-3)


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
        set_plan(tiny, plan)
    assert current_plan(tiny) == NO_SKIP and all("forward" not in l.__dict__ for l in tiny.model.layers)


@pytest.mark.parametrize("hard,soft,message", [
    (["2"], None, "layer index '2' is not an integer"),
    ([2.0], None, "layer index 2.0 is not an integer"),
    (None, {3: "0.5"}, "alpha for layer 3 is '0.5', not a number"),
])
def test_plan_types_are_checked(hard, soft, message):
    with pytest.raises(PlanError, match=message):
        SkipPlan.make(hard=hard or (), soft=soft)


@pytest.mark.parametrize("pivot", [1, 2, 5, 6])
def test_router_embedding_equals_reference_hidden_state(tiny, pivot):
    batch = left_padded(ROWS)
    with torch.inference_mode():
        reference = tiny(**batch, output_hidden_states=True).hidden_states[pivot]
    hidden = pivot_hidden(tiny, batch, pivot)
    if pivot < 6:  # hidden_states[-1] is after the final norm; earlier entries are raw layer outputs
        assert torch.equal(hidden, reference)
    last = router_embedding(tiny, batch, pivot, "last")
    assert torch.equal(last, hidden[:, -1, :].float())
    mean = router_embedding(tiny, batch, pivot, "mean")
    expected = hidden[1, -3:, :].mean(0)  # row 1 has 3 real tokens, left-padded
    torch.testing.assert_close(mean[1], expected)


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


def test_skipping_works_on_a_model_dispatched_with_a_device_map(tmp_path):
    """accelerate's dispatch (here: some layers offloaded to disk, the CPU stand-in for a second device)
    installs its own forward on each layer; the gate goes on top of it and puts it back."""
    from accelerate import dispatch_model

    reference, dispatched = tiny_llama(dtype=torch.float32, seed=9), tiny_llama(dtype=torch.float32, seed=9)
    placement = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                 **{f"model.layers.{i}": ("disk" if i in (2, 3, 5) else "cpu") for i in range(6)}}
    dispatch_model(dispatched, device_map=placement, offload_dir=str(tmp_path))
    hooked = [layer.__dict__.get("forward") for layer in dispatched.model.layers]
    assert all(f is not None for f in hooked)  # accelerate's hooks
    batch = left_padded(ROWS)
    for plan in PLANS:
        expected = generate_ids(reference, batch, plan, max_new_tokens=6)
        assert torch.equal(generate_ids(dispatched, batch, plan, max_new_tokens=6), expected), plan.describe()
    assert [layer.__dict__.get("forward") for layer in dispatched.model.layers] == hooked  # the hooks are back
    assert torch.equal(next_token_logits(dispatched, batch), next_token_logits(reference, batch))


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
    devices = set(getattr(mapped, "hf_device_map", {}).values())
    assert "disk" in devices, devices
    batch = left_padded(ROWS)
    for plan in (NO_SKIP, SkipPlan.make(hard=[2, 5]), SkipPlan.make(soft={3: 0.5})):
        assert torch.equal(generate_ids(mapped, batch, plan, max_new_tokens=5), generate_ids(reference, batch, plan, 5))
