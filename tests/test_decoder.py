"""The routed decoder: router work is reused, and each row runs exactly its routed plan."""
import numpy as np
import pytest
import torch

from ais.decoding.greedy import generate_ids, next_token_logits, plain_generate
from ais.decoding.routed import RoutedDecoder
from ais.model.gating import SkipPlan
from ais.routing.embedding import router_embedding
from ais.routing.plans import SkipSettings
from ais.routing.topomap import MapError, TopoMap
from conftest import left_padded, tiny_llama

ROWS = [[1, 5, 9, 14, 22, 7], [1, 30, 4], [1, 8, 8, 8, 61, 3, 12, 40, 42], [1, 11, 13]]
IMPORTANCE = np.array([[1, .9, .8, .5, .1, .7], [1, .9, .8, .2, .6, .7]])  # a skips layer 4, b layer 3


def decoder_for(model, labels, mode="hard", fraction=1 / 6):
    """A map whose entries are the rows' own router embeddings (pivot 2), labelled `labels`."""
    vectors = router_embedding(model, left_padded(ROWS), 2).double().numpy()
    identity = {"model_type": "llama", "n_layers": 6, "hidden_size": 32, "vocab_size": 97,
                "pivot_layer": 2, "pooling": "last"}
    topo = TopoMap(vectors, np.array(labels), ["a", "b"], identity, importance=IMPORTANCE)
    return RoutedDecoder(model, topo, SkipSettings(mode=mode, fraction=fraction, alpha=0.6), k=1)


def test_routes_follow_the_map_and_plans_follow_importance(tiny64):
    routed = decoder_for(tiny64, [0, 1, 0, 1])
    _, routes = routed.next_token_logits(left_padded(ROWS))
    assert [r.category for r in routes] == ["a", "b", "a", "b"]
    assert [r.plan for r in routes] == [SkipPlan.make(hard=[4]), SkipPlan.make(hard=[3])] * 2
    assert all(r.neighbours[0] == i and r.similarities[0] == pytest.approx(1, abs=1e-4) for i, r in enumerate(routes))


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_routed_logits_equal_plain_forward_under_each_rows_plan(tiny64, mode):
    routed = decoder_for(tiny64, [0, 1, 0, 1], mode=mode)
    batch = left_padded(ROWS)
    logits, routes = routed.next_token_logits(batch)
    for i, route in enumerate(routes):
        reference = next_token_logits(tiny64, batch, route.plan)[i]
        torch.testing.assert_close(logits[i], reference, rtol=1e-6, atol=1e-7)


def test_single_plan_batch_is_bit_identical_to_plain_forward(tiny):
    routed = decoder_for(tiny, [0, 0, 0, 0])
    batch = left_padded(ROWS)
    logits, routes = routed.next_token_logits(batch)
    assert torch.equal(logits, next_token_logits(tiny, batch, routes[0].plan))


def test_router_layers_run_once(tiny):
    routed = decoder_for(tiny, [0, 1, 0, 1])
    calls = []
    for idx, layer in enumerate(tiny.model.layers):  # the MLP runs only when the layer really runs
        layer.mlp.register_forward_hook(lambda m, a, o, idx=idx: calls.append(idx))
    routed.next_token_logits(left_padded(ROWS))
    assert calls.count(0) == 1 and calls.count(1) == 1      # below the pivot: once for the batch
    assert calls.count(4) == 1 and calls.count(3) == 1      # each skipped by one of the two groups


def test_routed_generation_equals_plain_generation_under_the_plan(tiny64):
    routed = decoder_for(tiny64, [0, 1, 0, 1])
    batch = left_padded(ROWS)
    new, routes = routed.generate(batch, max_new_tokens=7)
    for i, route in enumerate(routes):
        single = left_padded([ROWS[i]])
        assert torch.equal(new[i], plain_generate(tiny64, single, 7, route.plan)[0])
        assert torch.equal(new[i], generate_ids(tiny64, single, route.plan, 7, eos_token_id=-1)[0])


def test_plain_loop_matches_transformers_generate(tiny64):
    batch = left_padded(ROWS)
    for plan in (SkipPlan(), SkipPlan.make(hard=[2, 5])):
        assert torch.equal(plain_generate(tiny64, batch, 9, plan), generate_ids(tiny64, batch, plan, 9, eos_token_id=-1))


def test_generation_stops_rows_at_eos(tiny64):
    batch = left_padded(ROWS)
    free = plain_generate(tiny64, batch, 8)[0].tolist()
    pos = next(j for j in range(1, 7) if free[j] not in free[:j] and free[j] != 0)
    stopped = plain_generate(tiny64, batch, 8, eos_token_id=free[pos])
    assert stopped[0, :pos + 1].tolist() == free[:pos + 1] and (stopped[0, pos + 1:] == 0).all()


def test_decoder_refuses_map_without_importance_or_for_other_model(tiny):
    vectors = np.random.default_rng(0).normal(size=(4, 32))
    ident = {"n_layers": 6, "hidden_size": 32, "pivot_layer": 2}
    with pytest.raises(MapError, match="no layer importance"):
        RoutedDecoder(tiny, TopoMap(vectors, [0, 1, 0, 1], ["a", "b"], ident), SkipSettings())
    with pytest.raises(MapError, match="n_layers=8, but this model has n_layers=6"):
        RoutedDecoder(tiny, TopoMap(vectors, [0, 1, 0, 1], ["a", "b"], {**ident, "n_layers": 8}, IMPORTANCE), SkipSettings())


def test_knn_router_searches_the_map_once_and_the_learned_router_never(tiny, monkeypatch):
    routed = decoder_for(tiny, [0, 1, 0, 1])
    vectors = router_embedding(tiny, left_padded(ROWS), 2).numpy()
    searches = []
    search = routed.topo.index.search
    monkeypatch.setattr(routed.topo.index, "search", lambda *a: searches.append(1) or search(*a))
    knn = routed.route_embeddings(vectors)
    assert len(searches) == 1 and all(len(r.neighbours) == 1 for r in knn)
    routed.topo.router = {"coef": np.eye(2, 32, dtype=np.float32), "intercept": np.zeros(2, np.float32)}
    routed.router = "learned"
    learned = routed.route_embeddings(vectors)
    assert len(searches) == 1, "the learned router searched the FAISS index"
    assert all(r.neighbours == [] and r.category in ("a", "b") for r in learned)


def test_route_prompts_runs_the_router_in_batches_of_batch_size(tiny):
    from conftest import tiny_tokenizer

    routed = decoder_for(tiny, [0, 1, 0, 1])
    forwards = []
    tiny.model.embed_tokens.register_forward_hook(lambda m, a, o: forwards.append(a[0].shape[0]))
    routed.batch_size = 2
    routed.route_prompts(tiny_tokenizer(), ["what is the capital of france", "add two", "write a story", "sum"])
    assert forwards == [2, 2]


def test_mode_full_routes_but_skips_nothing_and_soft_blends(tiny64):
    routed = decoder_for(tiny64, [0, 1, 0, 1])
    batch = left_padded(ROWS)
    full, routes = routed.generate(batch, 6, mode="full")
    assert [r.category for r in routes] == ["a", "b", "a", "b"] and all(r.plan == SkipPlan() for r in routes)
    assert torch.equal(full, generate_ids(tiny64, batch, SkipPlan(), 6, eos_token_id=-1))
    _, soft = routed.next_token_logits(batch, mode="soft")
    assert [r.plan for r in soft] == [SkipPlan.soft_of([4], 0.6), SkipPlan.soft_of([3], 0.6)] * 2
