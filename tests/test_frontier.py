"""The adaptivity frontier on tiny models: decode-time scoring equals generation after a full
prefill, the dynamic gates are calibrated to the asked depth, every level is scored and timed."""
import numpy as np
import pytest
import torch
from transformers import DynamicCache

from ais.decoding.dynamic import DepthGate
from ais.decoding.greedy import generate_after_full_prefill, greedy_continue
from ais.evaluation.frontier import (CALM, DYNAMIC, FLOOR, ROUTED, calibrate_gates, dynamic_candidates,
                                     measure_quality, measure_speed, request_calls, summarise)
from ais.evaluation.quality import compare_logprobs, decode_logprobs, make_reference
from ais.model.gating import NO_SKIP, SkipPlan, skipping
from ais.model.prompts import encode_prompts
from conftest import tiny_llama, tiny_routed_decoder, tiny_tokenizer

PROMPTS = ["what is the capital of france", "write a story", "add two plus two number", "sum", "code a sum"]


@torch.inference_mode()
def test_decode_time_scoring_is_generation_after_a_full_prefill():
    model, tok = tiny_llama(dtype=torch.float64, seed=2), tiny_tokenizer()
    ref = make_reference(model, tok, PROMPTS, n_continuation=5)
    full = decode_logprobs(model, ref, NO_SKIP)
    torch.testing.assert_close(full, ref.full_logprobs, rtol=1e-7, atol=1e-7)  # no plan: the full model
    plan = SkipPlan.make(hard=[2, 4])
    scored = decode_logprobs(model, ref, plan)
    start = ref.columns.start
    cache = DynamicCache(config=model.config)
    prompt = {k: v[:, :start + 1] for k, v in ref.batch.items()}
    model(**prompt, past_key_values=cache, use_cache=True)
    for column in range(start + 1, ref.columns.stop):  # one token at a time, the plan applied to the new tokens only
        with skipping(model, plan):
            step = model(input_ids=ref.batch["input_ids"][:, column:column + 1],
                         attention_mask=ref.batch["attention_mask"][:, :column + 1], past_key_values=cache,
                         use_cache=True).logits[:, -1]
        torch.testing.assert_close(scored[:, column - start], torch.log_softmax(step.float(), -1), rtol=1e-6, atol=1e-6)
    assert compare_logprobs(full, scored, ref.scored)["top1"].mean() < 1


@torch.inference_mode()
def test_generation_after_a_full_prefill_skips_only_while_generating():
    model, tok = tiny_llama(seed=2), tiny_tokenizer()
    batch = encode_prompts(tok, PROMPTS[:3], "cpu")
    plan = SkipPlan.make(hard=[3])
    out = generate_after_full_prefill(model, batch, 6, [plan] * 3)
    cache = DynamicCache(config=model.config)
    first = model(**batch, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1)
    with skipping(model, plan):
        expected = greedy_continue(model, first, batch["attention_mask"], cache, 6)
    assert torch.equal(out, expected)


@pytest.fixture(scope="module")
def system():
    model, tok = tiny_llama(seed=1), tiny_tokenizer()
    return tiny_routed_decoder(model, tok, PROMPTS[:4], [0, 1, 0, 1]), tok


def test_gates_are_calibrated_to_the_asked_mean_depth(system):
    decoder, tok = system
    gates = calibrate_gates(decoder.model, tok, PROMPTS, [0, 1, 2], 6, min_layer=2,
                            candidates={n: dynamic_candidates(decoder, n) for n in (1, 2)})
    assert set(gates) == {1, 2} and gates[1].threshold >= gates[2].threshold
    assert gates[1].candidates == frozenset(dynamic_candidates(decoder, 1)) and gates[2].min_layer == 2
    calm = calibrate_gates(decoder.model, tok, PROMPTS, [3], 6, min_layer=2, candidates={})
    assert calm[3].candidates is None
    with pytest.raises(ValueError, match="cannot skip 3 layers"):
        calibrate_gates(decoder.model, tok, PROMPTS, [3], 6, min_layer=2, candidates={3: [4]})


def test_every_level_is_scored_on_both_splits_and_the_floor_is_exact_in_float64():
    model, tok = tiny_llama(dtype=torch.float64, seed=1), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, PROMPTS[:4], [0, 1, 0, 1])
    by_split = {"heldout": {"a": PROMPTS[:2], "b": PROMPTS[2:4]}, "heldout_task": {"a": PROMPTS[4:], "b": PROMPTS[:1]}}
    gates = {DYNAMIC: {1: DepthGate(0.5, 2, [3, 4])}, CALM: {1: DepthGate(0.9, 2)}}
    rows = measure_quality(decoder, tok, by_split, [0, 1], 4, 0, {"original_fixed_half": {"a": [3], "b": [3]}}, gates,
                           progress=False)
    methods = {(r["method"], r["n_skipped"]) for r in rows}
    assert {(ROUTED, 1), ("global", 1), ("oracle", 1), ("random", 1), (DYNAMIC, 1), (CALM, 1), (FLOOR, 0),
            ("original_fixed_half", 1), ("global", 0)} <= methods
    assert len(rows) == len(methods) * 6
    floor = [r for r in rows if r["method"] == FLOOR]
    assert all(r["top1"] == 1 and r["kl"] < 1e-9 for r in floor)  # float64: one token at a time rounds alike
    assert all(r["layers_skipped"] == 1 for r in rows if r["method"] == "global" and r["n_skipped"] == 1)
    assert all(0 <= r["layers_skipped"] <= 2 for r in rows if r["method"] == DYNAMIC)
    summary = summarise(rows, {}, "hard", 6, 0)
    routed = next(r for r in summary if r["method"] == ROUTED and r["n_skipped"] == 1 and r["split"] == "heldout")
    assert routed["minus_global_top1_ci_low"] <= routed["minus_global_top1"] <= routed["minus_global_top1_ci_high"]
    dynamic = next(r for r in summary if r["method"] == DYNAMIC and r["split"] == "heldout")
    assert "minus_routed_top1" in dynamic and dynamic["mode"] == "per-token"


def test_every_timed_point_runs_as_a_whole_request(system):
    decoder, tok = system
    gates = {1: DepthGate(0.5, 2, [3, 4])}
    calls = request_calls(decoder, [0, 1], gates, new_tokens=3)
    assert set(calls) == {("full", 0), ("global", 1), (ROUTED, 1), (DYNAMIC, 1), ("prompt", 1)}  # no map scores: no neighbours
    batch = encode_prompts(tok, PROMPTS[:2], "cpu")
    for fn in calls.values():
        out = fn(batch)
        ids = out[0] if isinstance(out, tuple) else out
        assert ids.shape == (2, 3)
    speed = measure_speed(decoder, tok, PROMPTS, calls, [1, 2], 3, warmup=1, repeats=2, seed=0)
    assert set(speed) == {(*k, b) for k in calls for b in (1, 2)}
    assert speed[("full", 0, 1)]["speedup"] == 1.0 and all(v["tok_per_s"] > 0 for v in speed.values())
    summary = summarise([{"split": "heldout", "category": "a", "prompt": 0, "method": m, "n_skipped": n,
                          "layers_skipped": float(n), "top1": 1.0, "top5": 1.0, "kl": 0.0} for m, n in calls],
                        speed, "hard", 6, 0)
    assert all("b1_speedup" in r and "b2_tok_per_s" in r for r in summary)
    assert np.isclose(next(r for r in summary if r["method"] == "global")["ideal_decode_speedup"], 6 / 5)
