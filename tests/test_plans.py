"""The adaptivity ladder's plan kinds on tiny models: global, category, neighbours (the nearest map
entries' own layer scores) and prompt (the prompt's own, from a prefill of every layer), all under
one budget rule; the per-prompt oracle; the scores behind them."""
import numpy as np
import pytest
import torch

from ais.decoding.greedy import plain_generate
from ais.evaluation.frontier import (CATEGORY_SCORES, NEIGHBOURS, PROMPT, PROMPT_ORACLE, ladder_gaps,
                                     measure_quality, prompt_oracle_plans)
from ais.evaluation.quality import decode_logprobs, make_reference
from ais.model.forward import block_influence
from ais.model.gating import NO_SKIP, SkipPlan
from ais.model.prompts import encode_prompts
from ais.routing.embedding import embed_and_score, router_embedding
from ais.routing.plans import PLAN_KINDS, layers_from_scores, n_layers_to_skip
from ais.routing.topomap import TopoMap
from conftest import identities, tiny_llama, tiny_routed_decoder, tiny_tokenizer

CONTEXTS = ["what is the capital of france", "write a story", "sum two plus two", "write code", "the story of paris"]


@torch.inference_mode()
def test_embeddings_and_layer_scores_come_from_one_forward_and_match_their_definitions():
    model, tok = tiny_llama(seed=4), tiny_tokenizer()
    vectors, scores = embed_and_score(model, tok, CONTEXTS, 2, progress=False)
    for i, context in enumerate(CONTEXTS):
        batch = encode_prompts(tok, [context], "cpu")
        torch.testing.assert_close(torch.from_numpy(vectors[i]), router_embedding(model, batch, 2)[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.from_numpy(scores[i]), block_influence(model, batch)[0].float(),
                                   rtol=1e-4, atol=1e-5)


def test_the_prompt_plan_skips_an_identity_layer_first_and_changes_nothing():
    model, tok = identities(tiny_llama(dtype=torch.float64, seed=4), [3]), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS[:4], [0, 1, 0, 1], plan="prompt")
    batch = encode_prompts(tok, CONTEXTS[:3], "cpu")
    out, routes = decoder.generate(batch, 6)
    assert all(r.plan == SkipPlan.make(hard=[3]) for r in routes)  # 1/6 of 6 layers: the identity
    assert torch.equal(out, plain_generate(model, batch, 6))
    assert np.allclose([r.scores[3] for r in routes], 0, atol=1e-9)
    logits, same = decoder.next_token_logits(batch)  # the prompt plan saves nothing in the prefill
    assert [r.plan for r in same] == [r.plan for r in routes]
    torch.testing.assert_close(logits, model(**batch, logits_to_keep=1).logits[:, -1].float())


def test_the_neighbours_plan_with_k1_on_a_map_prompt_is_that_prompts_own_plan():
    model, tok = tiny_llama(seed=5), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS, [0, 1, 0, 1, 0], plan="neighbours", scores=True)
    decoder.settings = type(decoder.settings)(mode="hard", plan="neighbours", fraction=0.34, alpha=0.6)
    own = decoder.with_plan("prompt").route_prompts(tok, CONTEXTS)
    for i, route in enumerate(decoder.route_prompts(tok, CONTEXTS)):
        assert route.neighbours == [i]
        assert route.plan == SkipPlan.make(hard=layers_from_scores(decoder.topo.prompt_scores[i], 2, decoder.settings))
        assert route.plan == own[i].plan


@pytest.mark.parametrize("kind", PLAN_KINDS)
@pytest.mark.parametrize("fraction", [1 / 6, 0.34, 0.5])
def test_every_plan_kind_keeps_the_budget_and_the_protected_layers(kind, fraction):
    model, tok = tiny_llama(seed=5), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS, [0, 1, 0, 1, 0], plan=kind, scores=True, k=2)
    decoder.settings = type(decoder.settings)(mode="hard", plan=kind, fraction=fraction, alpha=0.6, critical=0.95)
    for route in decoder.route_prompts(tok, CONTEXTS):
        layers = route.plan.layers
        assert len(layers) <= n_layers_to_skip(fraction, 6) and all(i >= 2 for i in layers)  # never below the pivot
        if kind in ("global", "category"):
            importance = decoder.pooled_importance() if kind == "global" else \
                decoder.topo.importance[decoder.topo.categories.index(route.category)]
            assert all(importance[i] < 0.95 for i in layers)  # never a critical layer
        assert len(layers) == min(n_layers_to_skip(fraction, 6), 4 if kind in ("neighbours", "prompt") else 3)
    with pytest.raises(ValueError, match="plan="):
        decoder.with_plan("token")


def test_the_map_keeps_each_entrys_layer_scores(tmp_path):
    model, tok = tiny_llama(seed=5), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS, [0, 1, 0, 1, 0], scores=True)
    decoder.topo.save(tmp_path / "map")
    loaded = TopoMap.load(tmp_path / "map")
    assert np.array_equal(loaded.prompt_scores, decoder.topo.prompt_scores)
    assert np.allclose(loaded.neighbour_scores([0, 2]), decoder.topo.prompt_scores[[0, 2]].mean(0))


@torch.inference_mode()
def test_the_per_prompt_oracle_removes_an_identity_layer_first():
    model, tok = identities(tiny_llama(dtype=torch.float64, seed=6), [4]), tiny_tokenizer()
    ref = make_reference(model, tok, CONTEXTS[:3], 5)
    full = decode_logprobs(model, ref, NO_SKIP)
    plans = prompt_oracle_plans(model, ref, full, [2, 3, 4, 5], [1, 2])
    assert all(p == SkipPlan.make(hard=[4]) for p in plans[1]) and all(len(p.hard) == 2 and 4 in p.hard for p in plans[2])


def test_the_ladder_is_scored_level_by_level_with_paired_gaps():
    model, tok = tiny_llama(dtype=torch.float64, seed=5), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS, [0, 1, 0, 1, 0], scores=True, k=2)
    by_split = {"heldout": {"a": CONTEXTS[:2], "b": CONTEXTS[2:4]}}
    rows = measure_quality(decoder, tok, by_split, [0, 1], 4, 0, {}, {}, [1], oracle_per_category=2, progress=False)
    methods = {r["method"] for r in rows}
    assert {NEIGHBOURS, PROMPT, CATEGORY_SCORES, PROMPT_ORACLE} <= methods
    one = {(r["method"], r["category"], r["prompt"]): r["top1"] for r in rows if r["n_skipped"] == 1}
    for (method, category, prompt), top1 in one.items():  # one layer: the search is exhaustive, so a ceiling
        assert one[(PROMPT_ORACLE, category, prompt)] >= top1 - 1e-9, method
    gaps = ladder_gaps(rows, 0)
    pairs = {(g["higher"], g["lower"]) for g in gaps}
    assert ("routed", "global") in pairs and (NEIGHBOURS, "routed") in pairs and (PROMPT_ORACLE, PROMPT) in pairs
    assert (PROMPT, NEIGHBOURS) in pairs and (PROMPT, "routed") not in pairs
    without = ladder_gaps([r for r in rows if r["method"] not in (NEIGHBOURS, CATEGORY_SCORES)], 0)
    assert (PROMPT, "routed") in {(g["higher"], g["lower"]) for g in without}  # the level below among those measured
    for g in gaps:
        assert g["top1_difference_ci_low"] <= g["top1_difference"] <= g["top1_difference_ci_high"] and g["n_prompts"] == 4
    fewer = measure_quality(decoder, tok, by_split, [0, 1], 4, 0, {}, {}, [1], oracle_per_category=1, progress=False)
    assert sorted((r["category"], r["prompt"]) for r in fewer if r["method"] == PROMPT_ORACLE) == [("a", 0), ("b", 0)]


def test_the_frontier_summary_pairs_the_oracles_subset_with_the_same_prompts():
    from ais.evaluation.frontier import summarise

    model, tok = tiny_llama(dtype=torch.float64, seed=5), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS, [0, 1, 0, 1, 0], scores=True, k=2)
    rows = measure_quality(decoder, tok, {"heldout": {"a": CONTEXTS[:2], "b": CONTEXTS[2:4]}}, [0, 1], 4, 0, {}, {}, [1],
                           oracle_per_category=1, progress=False)
    oracle = next(r for r in summarise(rows, {}, "hard", 6, 0) if r["method"] == PROMPT_ORACLE)
    assert oracle["n_prompts"] == 2 and oracle["minus_global_top1_n"] == 2
