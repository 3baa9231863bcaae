"""Quality metrics against the full model: zero for no skip, consistent across row subsets."""
import numpy as np
import torch

from ais.evaluation.quality import compare, make_reference
from ais.model.gating import NO_SKIP, SkipPlan
from ais.evaluation.validation import conditions, score_plans
from conftest import tiny_llama, tiny_routed_decoder, tiny_tokenizer

PROMPTS = ["what is the capital of france", "write a story", "add two plus two number", "sum"]


def test_no_skip_has_zero_kl_and_full_agreement():
    model, tok = tiny_llama(dtype=torch.float64), tiny_tokenizer()
    ref = make_reference(model, tok, PROMPTS, n_continuation=5)
    assert ref.full_logprobs.shape[:2] == (4, 5)
    scores = compare(model, ref, NO_SKIP)
    assert torch.all(scores["kl"] < 1e-9) and torch.all(scores["top1"] == 1) and torch.all(scores["top5"] == 1)
    skipped = compare(model, ref, SkipPlan.make(hard=[1, 2, 3]))
    assert torch.all(skipped["kl"] > 1e-4) and skipped["top1"].mean() < 1


def test_row_subsets_score_like_the_whole_batch():
    model, tok = tiny_llama(dtype=torch.float64), tiny_tokenizer()
    ref = make_reference(model, tok, PROMPTS, n_continuation=4)
    plan = SkipPlan.make(hard=[2, 4])
    whole = compare(model, ref, plan)
    per_row = score_plans(model, ref, {"mixed": [plan, NO_SKIP, plan, NO_SKIP]})["mixed"]
    for i in (0, 2):
        assert abs(per_row["kl"][i] - whole["kl"][i].item()) < 1e-4
        assert per_row["top1"][i] == whole["top1"][i].item()
    assert per_row["kl"][1] < 1e-6 and per_row["top1"][3] == 1


def test_the_pivot_control_may_skip_the_routers_layers_and_the_global_plan_may_not():
    model, tok = tiny_llama(), tiny_tokenizer()
    prompts = ["what is the capital of france", "write a story"]
    decoder = tiny_routed_decoder(model, tok, prompts, [0, 1])  # pivot 2; pooled importance lowest at 3, then 4
    decoder.topo.global_importance[1] = 0.0  # the router's layer 1 is now the least important
    assert decoder.global_layers(1) == [3] and decoder.global_layers(1, below_pivot=True) == [1]
    plans = conditions(decoder, "a", decoder.route_prompts(tok, prompts), np.random.default_rng(0))
    assert plans["global"][0] == SkipPlan.make(hard=[3]) and plans["global_any_layer"][0] == SkipPlan.make(hard=[1])
