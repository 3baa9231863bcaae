"""The adaptivity frontier on tiny models: decode-time scoring equals generation after a full
prefill, the dynamic gates are calibrated to the asked depth, every method is scored (the sub-layer
method through the method interface alone, at a measured cost) and every deployable one is timed."""
import numpy as np
import pytest
import torch

from ais.decoding.greedy import prefill
from ais.device import time_interleaved
from ais.evaluation.calibration import available_methods, calibrated
from ais.evaluation.frontier import FLOOR, measure_quality, measure_speed, plan_cost, request_calls, summarise
from ais.evaluation.quality import compare_logprobs, decode_logprobs, make_reference
from ais.methods import MethodError
from ais.model.engine import Engine
from ais.model.plan import SkipPlan
from ais.model.prompts import encode_prompts
from conftest import tiny_llama, tiny_routed_decoder, tiny_tokenizer

PROMPTS = ["what is the capital of france", "write a story", "add two plus two number", "sum", "code a sum"]
CALIBRATION = {"a": PROMPTS[:3], "b": PROMPTS[2:]}


def test_decode_time_scoring_is_generation_after_a_full_prefill():
    engine, tok = Engine(tiny_llama(dtype=torch.float64, seed=2)), tiny_tokenizer()
    ref = make_reference(engine, tok, PROMPTS, n_continuation=5)
    full = decode_logprobs(engine, ref, None)
    torch.testing.assert_close(full, ref.full_logprobs, rtol=1e-7, atol=1e-7)  # no plan: the full model
    plan = SkipPlan.make(hard=[2, 4])
    scored = decode_logprobs(engine, ref, [plan] * 5)
    start = ref.columns.start
    flight, _ = prefill(engine, {k: v[:, :start + 1] for k, v in ref.batch.items()}, None, [plan] * 5)
    for column in range(start + 1, ref.columns.stop):  # one token at a time, the plan applied to the new tokens only
        step = flight.step(ref.batch["input_ids"][:, column:column + 1])
        torch.testing.assert_close(scored[:, column - start], torch.log_softmax(step.float(), -1), rtol=1e-6, atol=1e-6)
    assert compare_logprobs(full, scored, ref.scored)["top1"].mean() < 1


@pytest.fixture(scope="module")
def system():
    model, tok = tiny_llama(seed=1), tiny_tokenizer()
    return tiny_routed_decoder(model, tok, PROMPTS[:4], [0, 1, 0, 1]), tok


def test_gates_are_calibrated_to_the_asked_mean_depth(system):
    decoder, tok = system
    methods = calibrated(decoder, tok, ["dynamic", "dynamic_calm"], CALIBRATION, 6)
    dynamic, calm = methods["dynamic"], methods["dynamic_calm"]
    one, two = dynamic.gate(decoder.setup.budget(1)), dynamic.gate(decoder.setup.budget(2))
    assert one.threshold >= two.threshold and one.min_layer == 2
    assert one.candidates == frozenset(dynamic.candidates(1)) and len(dynamic.candidates(2)) <= 4
    assert calm.gate(decoder.setup.budget(3)).candidates is None
    dynamic.candidates = lambda n: [4]
    dynamic.gates.clear()
    with pytest.raises(MethodError, match="cannot skip 3 layers"):
        dynamic.gate(decoder.setup.budget(3))


def test_every_method_is_scored_on_both_splits_and_the_floor_is_exact_in_float64(tmp_path):
    model, tok = tiny_llama(dtype=torch.float64, seed=1), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, PROMPTS[:4], [0, 1, 0, 1])
    by_split = {"heldout": {"a": PROMPTS[:2], "b": PROMPTS[2:4]}, "heldout_task": {"a": PROMPTS[4:], "b": PROMPTS[:1]}}
    names = ["global", "category", "oracle", "random", "prompt", "prompt_oracle", "dynamic", "dynamic_calm", "sublayer",
             "neighbours"]
    kept, left = available_methods(decoder, names)
    assert "neighbours" in left and "map" in left["neighbours"]  # this map holds no per-entry scores
    methods = calibrated(decoder, tok, kept, CALIBRATION, 4)
    costs = methods["sublayer"].costs
    layer_costs = {f"{kind}@{i}": c for (kind, i), c in costs.items()}
    layer_costs.update({f"{kind}@{i}": 0.5 for i in range(2) for kind in ("attention", "mlp")}, layer=1.0)
    rows = measure_quality(decoder, tok, by_split, methods, [0, 1, 2], 4, layer_costs, oracle_counts=[1],
                           progress=False)
    points = {(r["method"], r["n_skipped"]) for r in rows}
    assert {("category", 1), ("global", 2), ("oracle", 1), ("random", 1), ("dynamic", 1), ("dynamic_calm", 2),
            (FLOOR, 0), ("prompt_oracle", 1), ("sublayer", 1), ("sublayer", 2)} <= points
    floor = [r for r in rows if r["method"] == FLOOR]
    assert all(r["top1"] == 1 and r["kl"] < 1e-9 for r in floor)  # float64: one token at a time rounds alike
    assert all(r["layers_skipped"] == 1 and r["cost"] > 0 for r in rows if r["method"] == "global" and r["n_skipped"] == 1)
    assert all(r["cost"] <= 2 + 1e-9 for r in rows if r["method"] == "sublayer" and r["n_skipped"] == 2)  # cost-matched
    assert all(0 <= r["layers_skipped"] <= 2 * r["n_skipped"] for r in rows if r["method"] == "dynamic")
    summary = summarise(rows, {}, "hard", 6, 0, {"dynamic", "dynamic_calm"})
    routed = next(r for r in summary if r["method"] == "category" and r["n_skipped"] == 1 and r["split"] == "heldout")
    assert routed["minus_global_top1_ci_low"] <= routed["minus_global_top1"] <= routed["minus_global_top1_ci_high"]
    dynamic = next(r for r in summary if r["method"] == "dynamic" and r["split"] == "heldout")
    assert "minus_category_top1" in dynamic and dynamic["mode"] == "per-token"


def test_the_sublayer_method_spends_its_budget_by_measured_cost(system):
    decoder, tok = system
    method = calibrated(decoder, tok, ["sublayer"], CALIBRATION, 4)["sublayer"]
    assert set(method.costs) == {(k, i) for i in range(2, 6) for k in ("attention", "mlp")}
    method.costs = {b: (0.3 if b[0] == "attention" else 0.7) for b in method.costs}  # attention 0.3 of a layer
    plan = method.plan(None, decoder.setup.budget(1))
    assert method.cost_of(plan) <= 1 + 1e-9 and plan.blocks >= 2
    assert plan_cost(plan, {**{f"{k}@{i}": c for (k, i), c in method.costs.items()}, "layer": 1.0}) == pytest.approx(
        method.cost_of(plan))


def test_every_deployable_point_runs_as_a_whole_request(system):
    decoder, tok = system
    methods = calibrated(decoder, tok, ["global", "category", "prompt", "dynamic", "random", "prompt_oracle"],
                         CALIBRATION, 4)
    calls = request_calls(decoder, methods, [0, 1])
    assert set(calls) == {("full", 0), ("global", 1), ("category", 1), ("prompt", 1), ("dynamic", 1)}  # no controls
    batch = encode_prompts(tok, PROMPTS[:2], "cpu")
    for fn in calls.values():
        assert fn(batch, 3).shape == (2, 3)
    speed = measure_speed(decoder, tok, PROMPTS, calls, [1, 2], 3, warmup=1, repeats=2, seed=0)
    assert set(speed) == {(*k, b) for k in calls for b in (1, 2)}
    assert speed[("full", 0, 1)]["speedup"] == 1.0 and all(v["tok_per_s"] > 0 for v in speed.values())
    summary = summarise([{"split": "heldout", "category": "a", "prompt": 0, "method": m, "n_skipped": n,
                          "layers_skipped": float(n), "top1": 1.0, "top5": 1.0, "kl": 0.0} for m, n in calls],
                        speed, "hard", 6, 0)
    assert all("b1_speedup" in r and "b2_tok_per_s" in r for r in summary)
    assert np.isclose(next(r for r in summary if r["method"] == "global")["ideal_decode_speedup"], 6 / 5)


def test_timing_warms_up_on_its_own_calls_and_stops_once_every_ratio_is_tight():
    ran = {"full": 0, "a": 0, "warm": 0}

    def count(name):
        def call():
            ran[name] += 1
        return call

    calls, warm = {"full": count("full"), "a": count("a")}, {"full": count("warm"), "a": count("warm")}
    times = time_interleaved(calls, "cpu", 2, 5, warm=warm)
    assert ran == {"full": 5, "a": 5, "warm": 4} and len(times["a"]) == 5  # the warm-up ran the cheap calls only
    times = time_interleaved(calls, "cpu", 0, 5, baseline="full", target_iqr=1e9)
    assert len(times["full"]) == len(times["a"]) == 2  # every ratio's range met at the minimum of two repeats
    times = time_interleaved(calls, "cpu", 0, 3, baseline="full", target_iqr=None)
    assert len(times["a"]) == 3
