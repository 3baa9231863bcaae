"""The lossless stage's measurement: baselines beside the loop, exactness per dtype, the rounding
bound, the cost model and the drafter choice, on tiny models."""
import math

import pytest
import torch

from ais.decoding.datastore import Datastore
from ais.evaluation.lossless import (choose_drafters, continuation_logits, cost_model, exactness, generate_baseline,
                                     margin_at_divergence, measure, rounding_delta, variants)
from conftest import tiny_llama, tiny_routed_decoder, tiny_tokenizer

PROMPT = [1, 5, 9, 14, 22, 7]


def test_chunked_forwards_give_the_one_step_logits_in_float64():
    model = tiny_llama(dtype=torch.float64, seed=3)
    tokens = generate_baseline(model, PROMPT, 12, None)[0]
    steps = continuation_logits(model, PROMPT, tokens)
    assert steps.shape == (12, 97) and steps.argmax(-1).tolist() == tokens  # generate's own computation
    for k in (2, 3, 5):
        torch.testing.assert_close(continuation_logits(model, PROMPT, tokens, k), steps, rtol=1e-9, atol=1e-9)
    assert rounding_delta(model, PROMPT, tokens, 5) < 1e-9


def test_bfloat16_chunks_round_differently_and_the_delta_says_how_much():
    model = tiny_llama(dtype=torch.bfloat16, seed=3, hidden=64)
    tokens = generate_baseline(model, PROMPT, 16, None)[0]
    delta = rounding_delta(model, PROMPT, tokens, 5)
    assert 0 < delta < 1
    steps = continuation_logits(model, PROMPT, tokens)  # one prefill rolled back = a fresh prefill per width
    assert delta == max(float((continuation_logits(model, PROMPT, tokens, k) - steps).abs().max()) for k in range(2, 6))
    assert rounding_delta(model, PROMPT, tokens, 5, steps) == delta


def test_margin_at_divergence_is_the_references_top_two_gap_at_the_first_difference():
    model = tiny_llama(dtype=torch.float64, seed=3)
    reference = generate_baseline(model, PROMPT, 10, None)[0]
    steps = continuation_logits(model, PROMPT, reference)
    assert margin_at_divergence(steps, reference, reference) is None
    other = reference[:4] + [(reference[4] + 1) % 97] + reference[5:]
    position, margin = margin_at_divergence(steps, reference, other)
    top = continuation_logits(model, PROMPT, reference)[4].topk(2).values
    assert position == 4 and margin == pytest.approx(float(top[0] - top[1]))
    assert margin_at_divergence(steps, reference, reference[:6])[0] == 6  # stopped early


def _row(dtype, identical, margin=None, decoder="none"):
    return {"dtype": dtype, "decoder": decoder, "identical": identical, "reference_margin": margin}


def test_a_near_tie_counts_as_rounding_and_a_mismatch_above_the_bound_does_not():
    rows = [_row("bfloat16", 1), _row("bfloat16", 0, 0.01), _row("bfloat16", 1, decoder="generate"),
            _row("float32", 1)]
    result = exactness(rows, {"bfloat16": 0.05, "float32": 1e-5})
    assert result["bfloat16"]["identical_share"] == 0.5 and result["bfloat16"]["n_divergent"] == 1
    assert result["bfloat16"]["all_divergences_below_bound"] and result["float32"]["all_divergences_below_bound"]
    rows.append(_row("bfloat16", 0, 0.5))  # a flip where the reference's top two were far apart: not rounding
    assert not exactness(rows, {"bfloat16": 0.05, "float32": 1e-5})["bfloat16"]["all_divergences_below_bound"]


def test_only_the_named_drafters_are_measured_and_chosen():
    pairs = variants(["bfloat16"], "bfloat16", ("routed_skip", "suffix"))
    assert pairs == [("bfloat16", n) for n in ("generate", "generate_prompt_lookup", "none", "routed_skip", "suffix",
                                               "system")]
    strict = variants(["bfloat16", "float32"], "bfloat16", ("routed_skip", "suffix"), ablations=True)
    assert [n for d, n in strict if d == "float32"] == ["generate", "none", "suffix"]  # model-free drafters only
    assert ("bfloat16", "routed_skip_fixed_threshold") in strict
    rate = {"none": 10, "routed_skip": 9, "suffix": 14, "clasp": 20}  # tokens per second; clasp is not named
    rows = [{"category": "a", "dtype": "bfloat16", "decoder": n, "tokens": t, "seconds": 1.0} for n, t in rate.items()]
    assert choose_drafters(rows, "bfloat16", 1.0, ("routed_skip", "suffix")) == {"a": "suffix"}
    assert choose_drafters(rows, "bfloat16", 1.5, ("routed_skip", "suffix")) == {"a": "none"}


def test_cost_model_predicts_leviathans_speedup_and_break_even():
    summary = {"drafted_per_step": 4.0, "acceptance_rate": 0.8, "draft_ms_per_token": 5.0, "mean_accepted": 2.5}
    verify = {1: 10.0, 2: 10.0, 3: 10.0, 4: 10.0, 5: 10.0}  # verifying costs one step whatever the tokens
    out = cost_model(summary, verify)
    expected = (1 - 0.8 ** 5) / 0.2
    assert out["c"] == 0.5 and out["predicted_leviathan"] == pytest.approx(expected / 3, abs=1e-4)
    assert out["predicted_measured_cost"] == pytest.approx(3.5 / 3, abs=1e-4)
    assert out["c_to_break_even"] == pytest.approx(2.5 / 4, abs=1e-4)
    need = out["alpha_to_break_even"]  # at that acceptance the draft just pays for itself
    assert (1 - need ** 5) / (1 - need) == pytest.approx(3, abs=1e-3)
    assert cost_model({**summary, "drafted_per_step": 0.0}, verify)["predicted_leviathan"] == 1.0


def test_measure_times_every_decoder_in_both_dtypes_and_finds_them_exact_in_float32():
    tok = tiny_tokenizer()
    contexts = ["what is the capital of france", "write a story", "sum two plus two", "write code"]
    model = tiny_llama(dtype=torch.float32, seed=1)
    decoder = tiny_routed_decoder(model, tok, contexts, [0, 1, 0, 1])
    models = {"bfloat16": tiny_llama(dtype=torch.bfloat16, seed=1), "float32": model}
    settings = {"gamma": 3, "confidence": 0.5, "max_new_tokens": 6, "ngram": 2, "draft_fraction": 1 / 6,
                "clasp_interval": 1, "min_speedup": 1.0, "suffix_factor": 2.0, "suffix_probability": 0.1,
                "suffix_neighbours": 1, "lookup_sweep": [2, 3]}
    by_category = {"a": [contexts[0], contexts[2]], "b": [contexts[1], contexts[3]]}
    store = Datastore([[5, 6, 7], [8, 9]], decoder.topo.embeddings[:2], [0, 1], decoder.topo.identity)
    test = {"heldout": {c: p[1:] for c, p in by_category.items()}, "heldout_task": {"a": [contexts[1]]}}
    per_category, overall, rows, _ = measure(decoder, tok, models, {c: p[:1] for c, p in by_category.items()},
                                             test, settings, "float32", 0, progress=False, datastore=store)
    decoders = {(r["dtype"], r["decoder"]) for r in rows if r["split"] != "calibration"}
    assert {d for d in decoders if d[0] == "float32"} == {("float32", n) for n in (
        "generate", "generate_prompt_lookup", "none", "routed_skip", "clasp", "prompt_lookup", "suffix", "system")}
    assert {d for d in decoders if d[0] == "bfloat16"} == {("bfloat16", n) for n in ("generate", "none", "prompt_lookup",
                                                                                    "suffix")}
    calibration = {r["decoder"] for r in rows if r["split"] == "calibration"}
    assert {"generate_prompt_lookup@2", "generate_prompt_lookup@3", "suffix"} <= calibration
    assert overall["lookup"] in (2, 3) and set(overall["lookup_sweep_tok_per_s"]) == {"2", "3"}
    assert overall["test_splits"] == {"heldout": 2, "heldout_task": 1} and set(overall["by_split"]) == set(test)
    assert "vs_prompt_lookup" in overall["decoders"]["float32"]["suffix"]
    assert overall["exactness"]["float32"]["identical_share"] == 1.0
    assert overall["exactness"]["bfloat16"]["all_divergences_below_bound"]
    assert set(overall["chosen"]) == {"a", "b"} and set(per_category) == {"a", "b"}
    assert overall["system"]["vs_generate_bf16"]["speedup"] > 0
    system = [r for r in rows if r["decoder"] == "system"]
    assert len(system) == 3 and all(r["dtype"] == "float32" and r["drafter"] == overall["chosen"][r["routed_category"]]
                                    for r in system)
    assert list(overall["verify_ms_by_tokens"]["float32"]) == [1, 2, 3, 4]
    assert all(math.isfinite(v["cost_model"]["c"]) for v in overall["decoders"]["float32"].values() if "cost_model" in v)
