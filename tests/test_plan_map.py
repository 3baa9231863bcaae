"""The plan-defined map on a tiny model: the searched plans, their clustering, the labels by which
candidate works, the two routers (k-NN vote, learned), saving and loading with the model check, and
the method through the one interface."""
import numpy as np
import pytest
import torch

from ais.evaluation.plan_search import build_plan_map, cluster_plans, search_plans
from ais.routing.corpus import sample_per_category
from ais.methods import Request, make
from ais.methods.plan_map import FILE
from ais.routing.candidates import CandidatePlans
from ais.routing.topomap import MapError
from conftest import tiny_llama, tiny_routed_decoder, tiny_tokenizer

CONTEXTS = ["what is the capital of france", "write a story", "sum two plus two", "write code",
            "the story of paris", "add three and four"]


def test_entries_are_drawn_per_category_with_the_seed():
    categories = ["a"] * 5 + ["b"] * 2
    chosen = sample_per_category(categories, 3, seed=0)
    assert chosen == sorted(chosen) and chosen == sample_per_category(categories, 3, seed=0)
    assert sum(categories[i] == "a" for i in chosen) == 3 and {5, 6} <= set(chosen)


def test_clustering_finds_the_two_plan_families_and_never_more_candidates_than_distinct_plans():
    plans = [[3, 4], [3, 4], [3, 5], [1, 2], [1, 2], [2, 1]]
    found = cluster_plans(plans, 2, 2, 6, seed=0)
    assert sorted(map(tuple, found.tolist())) == [(1, 2), (3, 4)]
    assert len(cluster_plans([[3, 4]] * 4, 2, 8, 6, seed=0)) == 1


@pytest.fixture(scope="module")
def built():
    model, tok = tiny_llama(seed=4), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, CONTEXTS, [0, 1, 0, 1, 0, 0])
    categories = [decoder.topo.categories[i] for i in decoder.topo.labels]
    entries = list(range(len(CONTEXTS)))
    searched, _ = search_plans(decoder, tok, CONTEXTS, categories, 2, n_continuation=4, progress=False)
    assert all(len(order) == 2 for order in searched)
    plan_map, report = build_plan_map(decoder, tok, CONTEXTS, categories, entries, decoder.topo.embeddings, searched,
                                      [1, 2], k=2, n_continuation=4, seed=0)
    return decoder, tok, plan_map, report


def test_every_entry_keeps_the_candidate_that_works_best_for_it(built):
    decoder, _, plan_map, report = built
    assert plan_map.budgets == [1, 2] and report["entries"] == len(CONTEXTS)
    for n in (1, 2):
        r = report["by_budget"][str(n)]
        assert all(len(c) == n and min(c) >= decoder.pivot for c in r["candidates"])
        assert sum(r["sizes"]) == len(CONTEXTS) and 0 < r["category_purity"] <= 1
        # an entry's own candidate is at least the global plan's agreement when global is a candidate, and never
        # above its own search's (the candidate is one of the plans the search could have found)
        assert r["searched_top1"] + 1e-9 >= r["own_candidate_top1"]["top1"]


def test_the_plan_map_survives_saving_and_refuses_another_models(built, tmp_path):
    _, _, plan_map, _ = built
    plan_map.save(tmp_path / "plan_map")
    again = CandidatePlans.load(tmp_path / "plan_map", plan_map.identity)
    for n in plan_map.budgets:
        assert np.array_equal(again.labels[n], plan_map.labels[n])
        assert np.array_equal(again.candidates[n], plan_map.candidates[n])
    with pytest.raises(MapError, match="n_layers=6"):
        CandidatePlans.load(tmp_path / "plan_map", {**plan_map.identity, "n_layers": 12})
    with pytest.raises(MapError, match="not found"):
        CandidatePlans.load(tmp_path / "nothing")
    (tmp_path / "plan_map/candidates.json").write_text("{")
    with pytest.raises(MapError, match="corrupt"):
        CandidatePlans.load(tmp_path / "plan_map")


def test_a_map_entry_gets_its_own_candidate_from_both_routers_and_the_method_plans_it(built, tmp_path):
    decoder, tok, plan_map, _ = built
    plan_map.save(tmp_path / FILE)
    decoder.setup.root = tmp_path
    for name, router in (("plan_map", "knn"), ("plan_map_learned", "learned")):
        method = make(name, decoder.setup)
        assert method.unavailable() is None
        for j, entry in enumerate(plan_map.entries):
            label = plan_map.label(plan_map.embeddings[j], 2, 1, router)
            if router == "knn":
                assert label == plan_map.labels[2][j]  # k = 1: its own vote
            plan = method.plan(Request(CONTEXTS[entry], embedding=plan_map.embeddings[j]), decoder.setup.budget(2))
            assert sorted(plan.hard) == plan_map.candidates[2][label].tolist()
    with pytest.raises(MapError, match="rebuild it"):
        plan_map.plan_layers(plan_map.embeddings[0], 5, 1)
    decoder.setup.root = tmp_path / "elsewhere"
    assert "no plan map" in make("plan_map", decoder.setup).unavailable()


@torch.inference_mode()
def test_the_routed_decoder_runs_the_plan_map_with_no_special_case(built, tmp_path):
    decoder, tok, plan_map, _ = built
    plan_map.save(tmp_path / FILE)
    decoder.setup.root = tmp_path
    routes = decoder.with_plan("plan_map").route_prompts(tok, CONTEXTS[:3])
    assert all(len(r.plan.hard) == 1 for r in routes)
