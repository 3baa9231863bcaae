"""The routed decoder: router work is reused, and each row of a batch runs exactly its routed plan,
in one pass (no sub-batches per plan)."""
import numpy as np
import pytest
import torch

from ais.decoding.greedy import generate
from ais.decoding.routed import RoutedDecoder
from ais.model.engine import Engine
from ais.model.plan import SkipPlan
from ais.routing.embedding import router_embedding
from ais.routing.budget import SkipSettings
from ais.routing.topomap import MapError, TopoMap
from conftest import left_padded

ROWS = [[1, 5, 9, 14, 22, 7], [1, 30, 4], [1, 8, 8, 8, 61, 3, 12, 40, 42], [1, 11, 13]]
IMPORTANCE = np.array([[1, .9, .8, .5, .1, .7], [1, .9, .8, .2, .6, .7]])  # a skips layer 4, b layer 3


def decoder_for(model, labels, mode="hard", fraction=1 / 6, plan="category"):
    """A map whose entries are the rows' own router embeddings (pivot 2), labelled `labels`."""
    vectors = router_embedding(model, left_padded(ROWS), 2).double().numpy()
    identity = {"model_type": "llama", "n_layers": 6, "hidden_size": 32, "vocab_size": 97,
                "pivot_layer": 2, "pooling": "last"}
    topo = TopoMap(vectors, np.array(labels), ["a", "b"], identity, importance=IMPORTANCE,
                   global_importance=np.array([1, .9, .8, .3, .4, .7]))
    return RoutedDecoder(model, topo, SkipSettings(mode=mode, plan=plan, fraction=fraction, alpha=0.6), k=1)


def test_routes_follow_the_map_and_plans_follow_importance(tiny64):
    routed = decoder_for(tiny64, [0, 1, 0, 1])
    _, _, routes = routed.prefill(left_padded(ROWS))
    assert [r.category for r in routes] == ["a", "b", "a", "b"]
    assert [r.plan for r in routes] == [SkipPlan.make(hard=[4]), SkipPlan.make(hard=[3])] * 2
    assert all(r.neighbours[0] == i and r.similarities[0] == pytest.approx(1, abs=1e-4) for i, r in enumerate(routes))


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_routed_generation_is_each_rows_plan_alone(tiny64, mode):
    routed = decoder_for(tiny64, [0, 1, 0, 1], mode=mode)
    batch = left_padded(ROWS)
    new, routes, _ = routed.generate(batch, max_new_tokens=7)
    engine = Engine(tiny64)
    for i, route in enumerate(routes):
        assert torch.equal(new[i], generate(engine, left_padded([ROWS[i]]), 7, [route.plan])[0])
    assert torch.equal(new, generate(engine, batch, 7, [r.plan for r in routes]))


def test_a_mixed_batch_runs_in_one_pass(tiny):
    """Rows with different plans share every layer call: no layer runs more than once per forward."""
    routed = decoder_for(tiny, [0, 1, 0, 1])
    calls = []
    for idx, layer in enumerate(tiny.model.layers):
        layer.mlp.register_forward_hook(lambda m, a, o, idx=idx: calls.append((idx, a[0].shape[0])))
    routed.prefill(left_padded(ROWS))
    assert [i for i, _ in calls] == [0, 1, 2, 3, 4, 5]     # the router's layers once, then each layer once
    assert dict(calls)[3] == 2 and dict(calls)[4] == 2 and dict(calls)[2] == 4  # rows of b skip 3, rows of a skip 4


def test_the_prompt_plan_prefills_every_layer_then_skips_while_generating(tiny64):
    routed = decoder_for(tiny64, [0, 1, 0, 1], plan="prompt", fraction=2 / 6)
    batch = left_padded(ROWS)
    flight, logits, routes = routed.prefill(batch)
    engine = Engine(tiny64)
    with torch.inference_mode():
        full = engine.last_logits(engine.forward(batch["input_ids"], batch["attention_mask"]))
    assert torch.equal(logits, full)  # the prefill is the full model's
    assert all(r.scores is not None and len(r.plan.layers) == 2 for r in routes)
    new, routes, _ = routed.generate(batch, 6)
    expected = generate(engine, batch, 6, None, [r.plan for r in routes])
    assert torch.equal(new, expected)


def test_generation_stops_rows_at_eos(tiny64):
    engine, batch = Engine(tiny64), left_padded(ROWS)
    free = generate(engine, batch, 8)[0].tolist()
    pos = next(j for j in range(1, 7) if free[j] not in free[:j] and free[j] != 0)
    stopped = generate(engine, batch, 8, eos_token_id=free[pos])
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
    full, routes, _ = routed.generate(batch, 6, mode="full")
    assert [r.category for r in routes] == ["a", "b", "a", "b"] and all(r.plan == SkipPlan() for r in routes)
    assert torch.equal(full, generate(Engine(tiny64), batch, 6))
    _, _, soft = routed.prefill(batch, mode="soft")
    assert [r.plan for r in soft] == [SkipPlan.soft_of([4], 0.6), SkipPlan.soft_of([3], 0.6)] * 2
