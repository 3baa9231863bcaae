"""Methods through their one interface, on tiny models: the built-in plans (global, category,
neighbours, prompt) under one budget rule, the per-prompt oracle, the ladder's paired gaps, the
registry, and a toy method registered here appearing in validate's output with no stage edited."""
import numpy as np
import pytest
import torch

from ais.decoding.greedy import generate
from ais.evaluation.frontier import ladder_gaps, measure_quality, summarise
from ais.evaluation.importance import block_influence
from ais.evaluation.quality import make_reference
from ais.evaluation.validation import validate
from ais.methods import Method, MethodError, make, method_class, names, register
from ais.model.engine import Engine
from ais.model.plan import SkipPlan
from ais.model.prompts import encode_prompts
from ais.routing.embedding import embed_and_score, router_embedding
from ais.routing.budget import layers_from_scores, n_layers_to_skip
from ais.routing.topomap import TopoMap
from conftest import identities, tiny_llama, tiny_routed_decoder, tiny_tokenizer

CONTEXTS = ["what is the capital of france", "write a story", "sum two plus two", "write code", "the story of paris"]
DEPLOYABLE = ("global", "category", "neighbours", "prompt")


def test_the_registry_names_every_method_and_refuses_an_unknown_one():
    assert set(DEPLOYABLE) | {"dynamic"} <= set(names(deployable_only=True))
    assert {"oracle", "random", "global_any_layer", "prompt_oracle", "sublayer", "dynamic_calm"} <= set(names())
    assert not set(names(deployable_only=True)) & {"oracle", "random", "prompt_oracle", "sublayer"}
    with pytest.raises(MethodError, match="no method is named 'token'"):
        method_class("token")


@torch.inference_mode()
def test_embeddings_and_layer_scores_come_from_one_forward_and_match_their_definitions():
    model, tok = tiny_llama(seed=4), tiny_tokenizer()
    vectors, scores = embed_and_score(model, tok, CONTEXTS, 2, progress=False)
    for i, context in enumerate(CONTEXTS):  # batched with padding against alone: float rounding (docs/stack.md)
        batch = encode_prompts(tok, [context], "cpu")
        torch.testing.assert_close(torch.from_numpy(vectors[i]), router_embedding(model, batch, 2)[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(scores[i]), block_influence(Engine(model), batch)[0].float(),
                                   rtol=1e-4, atol=1e-5)


def test_the_prompt_plan_skips_an_identity_layer_first_and_changes_nothing():
    model, tok = identities(tiny_llama(dtype=torch.float64, seed=4), [3]), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS[:4], [0, 1, 0, 1], plan="prompt")
    batch = encode_prompts(tok, CONTEXTS[:3], "cpu")
    out, routes, _ = decoder.generate(batch, 6)
    assert all(r.plan == SkipPlan.make(hard=[3]) for r in routes)  # 1/6 of 6 layers: the identity
    assert torch.equal(out, generate(Engine(model), batch, 6))
    assert np.allclose([r.scores[3] for r in routes], 0, atol=1e-9)


def test_the_neighbours_plan_with_k1_on_a_map_prompt_is_that_prompts_own_plan():
    model, tok = tiny_llama(seed=5), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS, [0, 1, 0, 1, 0], plan="neighbours", scores=True)
    decoder = decoder.with_plan("neighbours")
    decoder.settings = decoder.setup.settings = type(decoder.settings)(mode="hard", plan="neighbours", fraction=0.34,
                                                                       alpha=0.6)
    own = decoder.with_plan("prompt").route_prompts(tok, CONTEXTS)
    for i, route in enumerate(decoder.route_prompts(tok, CONTEXTS)):
        assert route.neighbours == [i]
        assert route.plan == SkipPlan.make(hard=layers_from_scores(decoder.topo.prompt_scores[i], 2, decoder.settings))
        assert route.plan == own[i].plan


@pytest.mark.parametrize("kind", DEPLOYABLE)
@pytest.mark.parametrize("fraction", [1 / 6, 0.34, 0.5])
def test_every_method_keeps_the_budget_and_the_protected_layers(kind, fraction):
    model, tok = tiny_llama(seed=5), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS, [0, 1, 0, 1, 0], plan=kind, scores=True, k=2)
    settings = type(decoder.settings)(mode="hard", plan=kind, fraction=fraction, alpha=0.6, critical=0.95)
    decoder.settings = decoder.setup.settings = settings
    for route in decoder.route_prompts(tok, CONTEXTS):
        layers = route.plan.layers
        assert len(layers) <= n_layers_to_skip(fraction, 6) and all(i >= 2 for i in layers)  # never below the pivot
        if kind in ("global", "category"):
            importance = decoder.setup.pooled_importance() if kind == "global" else \
                decoder.setup.category_importance(route.category)
            assert all(importance[i] < 0.95 for i in layers)  # never a critical layer
        assert len(layers) == min(n_layers_to_skip(fraction, 6), 4 if kind in ("neighbours", "prompt") else 3)


def test_the_map_keeps_each_entrys_layer_scores(tmp_path):
    model, tok = tiny_llama(seed=5), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS, [0, 1, 0, 1, 0], scores=True)
    decoder.topo.save(tmp_path / "map")
    loaded = TopoMap.load(tmp_path / "map")
    assert np.array_equal(loaded.prompt_scores, decoder.topo.prompt_scores)
    assert np.allclose(loaded.neighbour_scores([0, 2]), decoder.topo.prompt_scores[[0, 2]].mean(0))


def test_the_per_prompt_oracle_removes_an_identity_layer_first():
    model, tok = identities(tiny_llama(dtype=torch.float64, seed=6), [4]), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS[:4], [0, 1, 0, 1])
    ref = make_reference(decoder.engine, tok, CONTEXTS[:3], 5)
    oracle = make("prompt_oracle", decoder.setup)
    requests = decoder.requests(decoder.route_prompts(tok, CONTEXTS[:3]), CONTEXTS[:3],
                                references=[ref.rows([i]) for i in range(3)])
    assert all(oracle.plan(r, decoder.setup.budget(1)) == SkipPlan.make(hard=[4]) for r in requests)
    two = [oracle.plan(r, decoder.setup.budget(2)) for r in requests]  # extends the same search
    assert all(len(p.hard) == 2 and 4 in p.hard for p in two)


def test_the_ladder_is_scored_level_by_level_with_paired_gaps():
    model, tok = tiny_llama(dtype=torch.float64, seed=5), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS, [0, 1, 0, 1, 0], scores=True, k=2)
    by_split = {"heldout": {"a": CONTEXTS[:2], "b": CONTEXTS[2:4]}}
    methods = {n: make(n, decoder.setup) for n in ("global", "category", "neighbours", "category_scores", "prompt",
                                                   "prompt_oracle")}
    rows = measure_quality(decoder, tok, by_split, methods, [0, 1], 4, {}, [1], oracle_per_category=2, progress=False)
    one = {(r["method"], r["category"], r["prompt"]): r["top1"] for r in rows if r["n_skipped"] == 1}
    for (method, category, prompt), top1 in one.items():  # one layer: the search is exhaustive, so a ceiling
        assert one[("prompt_oracle", category, prompt)] >= top1 - 1e-9, method
    gaps = ladder_gaps(rows, 0)
    pairs = {(g["higher"], g["lower"]) for g in gaps}
    assert {("category", "global"), ("neighbours", "category"), ("prompt_oracle", "prompt"), ("prompt", "neighbours")} <= pairs
    assert ("prompt", "category") not in pairs
    without = ladder_gaps([r for r in rows if r["method"] not in ("neighbours", "category_scores")], 0)
    assert ("prompt", "category") in {(g["higher"], g["lower"]) for g in without}  # the level below among those measured
    for g in gaps:
        assert g["top1_difference_ci_low"] <= g["top1_difference"] <= g["top1_difference_ci_high"] and g["n_prompts"] == 4
    oracle = next(r for r in summarise(rows, {}, "hard", 6, 0) if r["method"] == "prompt_oracle")
    assert oracle["n_prompts"] == 4 and oracle["minus_global_top1_n"] == 4


@register
class LastLayers(Method):
    """A toy method, registered by this test module alone: the budget's layers from the top down."""

    name = "toy_last_layers"

    def plan(self, request, budget):
        return self.setup.plan_of(range(self.setup.n_layers - budget.layers, self.setup.n_layers), budget)


def test_a_method_registered_here_appears_in_validates_output():
    model, tok = tiny_llama(seed=5), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS[:4], [0, 1, 0, 1])
    prompts = {"heldout": {"a": CONTEXTS[:2], "b": CONTEXTS[2:4]}}
    metrics, per_category, per_prompt = validate(decoder, tok, prompts, ["global", "toy_last_layers"], 3, 0,
                                                 progress=False)
    assert metrics["methods"] == ["global", "toy_last_layers"]
    assert "toy_last_layers_top1" in metrics["heldout"] and "routed_minus_toy_last_layers_top1_ci_low" in metrics["heldout"]
    assert all("toy_last_layers_kl" in row for row in per_prompt)
    assert "heldout_toy_last_layers_top1" in per_category[0]


@torch.inference_mode()
def test_the_out_of_sample_oracle_searches_on_the_early_half_of_the_positions_only():
    from ais.evaluation.quality import decode_logprobs
    from ais.methods import Request
    from ais.methods.search import greedy_removal

    model, tok = tiny_llama(seed=4), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS[:4], [0, 1, 0, 1])
    ref = make_reference(decoder.engine, tok, CONTEXTS[:3], 6)
    ref.full_logprobs, ref.protocol = decode_logprobs(decoder.engine, ref, None), "decode"
    setup, budget = decoder.setup, decoder.setup.budget(2)
    requests = [Request(p, reference=ref.rows([j]), key=p) for j, p in enumerate(CONTEXTS[:3])]
    together = make("prompt_oracle_oos", setup).plans(requests, budget)  # the rows' searches advance together
    for j, request in enumerate(requests):
        early = request.reference.restricted("early")
        steps = greedy_removal(lambda sets: early.score([setup.plan_of(s, budget) for s in sets]), setup.skippable(), 2)
        assert together[j] == setup.plan_of([s["layer"] for s in steps], budget)
        assert early.scored.sum() < request.reference.scored.sum()
