"""Importance measures and plans: EOS masking, the greedy plan search, split-half stability,
and the original prototype's plans for any number of groups."""
import numpy as np
import pytest
import torch

from ais.evaluation.importance import ablate, greedy_search, measure, split_half_stability
from ais.evaluation.quality import Reference, eos_mask, make_reference, score
from ais.methods.original import original_plans
from ais.model.engine import Engine
from ais.model.plan import SkipPlan
from ais.routing.budget import minmax_per_category
from conftest import tiny_llama, tiny_tokenizer


def compare(engine, ref, plan):
    return score(engine, ref, [plan] * len(ref))

PROMPTS = ["what is the capital of france", "write a story", "add two plus two number", "sum",
           "the story of paris", "code a sum"]


def test_eos_mask_scores_up_to_and_including_the_end():
    new = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    assert eos_mask(new, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert eos_mask(new, None).sum() == 12


def test_positions_after_the_end_do_not_count():
    model, tok = Engine(tiny_llama(dtype=torch.float64)), tiny_tokenizer()
    ref = make_reference(model, tok, PROMPTS[:3], n_continuation=5)
    plan = SkipPlan.make(hard=[2, 3])

    def scored(*columns):
        mask = torch.zeros(3, 5)
        mask[:, list(columns)] = 1.0
        return compare(model, Reference(ref.batch, ref.columns, ref.full_logprobs, mask), plan)

    first_two, first, second = scored(0, 1), scored(0), scored(1)
    for key in ("kl", "top1", "top5"):
        np.testing.assert_allclose(first_two[key], (first[key] + second[key]) / 2)
    assert not np.allclose(first_two["kl"], compare(model, ref, plan)["kl"])


def test_ablate_matches_compare():
    model, tok = Engine(tiny_llama(dtype=torch.float64)), tiny_tokenizer()
    ref = make_reference(model, tok, PROMPTS, n_continuation=4)
    fast = ablate(model, ref, [1], [3, 4])
    for j in (3, 4):
        slow = compare(model, ref, SkipPlan.make(hard=[1, j]))
        np.testing.assert_allclose(fast[j]["kl"], slow["kl"], rtol=1e-6, atol=1e-10)
        np.testing.assert_array_equal(fast[j]["top1"], slow["top1"])


def harmless_layer(model, layer: int):
    """Zero the layer's output projections: its residual branches add nothing, so it is an identity."""
    with torch.no_grad():
        model.model.layers[layer].self_attn.o_proj.weight.zero_()
        model.model.layers[layer].mlp.down_proj.weight.zero_()
    return model


def test_greedy_search_removes_a_harmless_layer_first():
    model, tok = Engine(harmless_layer(tiny_llama(n_layers=6, dtype=torch.float64), 4)), tiny_tokenizer()
    refs = [make_reference(model, tok, PROMPTS, n_continuation=4)]
    raw = greedy_search(model, refs, candidates=[2, 3, 4, 5], steps=2)
    assert np.isnan(raw[:2]).all() and raw[4] == 0.0  # removing layer 4 loses no agreement at all
    assert np.nanargmin(raw) == 4 and raw[[2, 3, 5]].min() >= raw[4]
    normalised = minmax_per_category(raw[None])
    assert normalised[0, 4] == 0.0 and (normalised[0, :2] == 1).all()  # not candidates: never chosen


def test_measure_reports_stability_and_the_pooled_measure():
    model, tok = Engine(tiny_llama(n_layers=6, dtype=torch.float64)), tiny_tokenizer()
    by_category = {"a": PROMPTS[:4], "b": PROMPTS[2:]}
    out = measure(model, tok, by_category, n_continuation=3, n_groups=3, method="greedy", pivot=2,
                  greedy_steps=2, chunk=2, progress=False)
    assert out["single"].shape == (2, 6) and np.isnan(out["single"][:, 0]).all()
    assert out["global_single"].shape == (6,) and np.isfinite(out["global_greedy"][2:]).all()
    for method in ("single", "group", "block_influence", "greedy"):
        assert set(out["stability"][method]) == {"a", "b"}
        assert all(-1 <= v <= 1 for v in out["stability"][method].values())
        assert set(out["stability_all_layers"][method]) == {"a", "b"}
    single = measure(model, tok, by_category, 3, 3, "single", 2, 2, progress=False)
    assert "greedy" not in single["stability"] and np.isnan(single["greedy"]).all()


def test_split_half_stability_is_one_for_identical_halves():
    per_prompt = np.array([[np.nan, 1, 2, 3, 4]] * 4, dtype=float)
    assert split_half_stability(per_prompt) == pytest.approx(1.0)


def test_split_half_stability_over_the_skippable_layers_ignores_the_ones_below_the_pivot():
    # layers 1-2 (below the pivot) dominate and agree; layers 3-5 are ranked oppositely by the halves
    even, odd = [np.nan, 9, 8, 1, 2, 3], [np.nan, 9, 8, 3, 2, 1]
    per_prompt = np.array([even, odd] * 3, dtype=float)
    assert split_half_stability(per_prompt) > 0.4
    assert split_half_stability(per_prompt, layers=[3, 4, 5]) == pytest.approx(-1.0)


@pytest.mark.parametrize("n_groups", [2, 3, 5, 6])
def test_original_plans_for_any_number_of_groups(n_groups):
    n_layers = 12
    group_kl = np.arange(2 * n_groups, dtype=float).reshape(2, n_groups)
    group_kl[1] = group_kl[1][::-1]  # category b's cheapest group is the last
    plans = original_plans(n_layers, group_kl, ["a", "b"])
    fixed = plans["original_fixed_half"]["a"]
    assert fixed == plans["original_fixed_half"]["b"] and 0 not in fixed
    assert abs(len(fixed) - n_layers / 2) <= n_layers / n_groups
    best = plans["original_best_group"]
    bounds = np.linspace(0, n_layers, n_groups + 1).round().astype(int)
    assert best["a"] == list(range(bounds[1], bounds[2]))      # group 0 holds layer 0: never chosen
    assert best["b"] == list(range(bounds[-2], bounds[-1]))
