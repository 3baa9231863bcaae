"""The topological map: FAISS round trip, lookups, refusal of bad input and foreign models."""
import numpy as np
import pytest
import torch

from ais.routing.embedding import embed_prompts, router_embedding
from ais.model.prompts import encode_prompts
from ais.routing.topomap import MapError, TopoMap, centroid_recall, knn_homogeneity
from conftest import tiny_llama, tiny_tokenizer

IDENTITY = {"model_type": "llama", "n_layers": 6, "hidden_size": 16, "vocab_size": 97}


def clustered(n_per=30, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 3
    vectors = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    labels = np.repeat(np.arange(3), n_per)
    return vectors, labels


def make_map():
    vectors, labels = clustered()
    return TopoMap(vectors, labels, ["a", "b", "c"], IDENTITY, importance=np.random.rand(3, 6),
                   router={"coef": np.eye(3, 16, dtype=np.float32), "intercept": np.zeros(3, np.float32)})


def test_save_load_round_trip(tmp_path):
    topo = make_map()
    topo.save(tmp_path / "map")
    back = TopoMap.load(tmp_path / "map", IDENTITY)
    assert back.categories == topo.categories and np.array_equal(back.labels, topo.labels)
    assert np.array_equal(back.embeddings, topo.embeddings)
    np.testing.assert_allclose(back.importance, topo.importance, rtol=1e-6)
    assert np.array_equal(back.router["coef"], topo.router["coef"])
    q = np.random.default_rng(3).normal(size=(5, 16))
    assert np.array_equal(back.search(q, 4)[1], topo.search(q, 4)[1])


def test_lookup_of_stored_vector_returns_itself():
    topo = make_map()
    vectors, _ = clustered()
    sims, idx = topo.search(vectors[[0, 41, 77]], 3)
    assert idx[:, 0].tolist() == [0, 41, 77]
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def test_vote_predicts_cluster_and_quality_metrics():
    topo = make_map()
    vectors, labels = clustered(seed=0)
    assert (topo.predict_knn(vectors, 5) == labels).mean() > 0.95
    assert knn_homogeneity(topo, 5) > 0.9
    assert min(centroid_recall(topo, 10).values()) >= 0.9


@pytest.mark.parametrize("bad,message", [
    (np.zeros(16), "all zeros"),
    (np.full(16, np.nan), "NaN or infinite"),
])
def test_bad_query_embedding_is_a_clear_error(bad, message):
    with pytest.raises(MapError, match=message):
        make_map().search(bad, 3)


def test_k_out_of_range_is_a_clear_error():
    topo = make_map()
    for k in (0, 91, "3"):
        with pytest.raises(MapError, match=r"must be an integer in 1..90"):
            topo.search(np.ones(16), k)


def test_map_for_another_model_is_refused(tmp_path):
    make_map().save(tmp_path / "map")
    with pytest.raises(MapError, match="built for a model with n_layers=6, but this model has n_layers=30"):
        TopoMap.load(tmp_path / "map", {**IDENTITY, "n_layers": 30})
    with pytest.raises(MapError, match="hidden_size=16, but this model has hidden_size=576"):
        TopoMap.load(tmp_path / "map", {**IDENTITY, "hidden_size": 576})


def test_missing_or_corrupt_map_files_are_clear_errors(tmp_path):
    with pytest.raises(MapError, match="run `dvc repro map` first"):
        TopoMap.load(tmp_path / "nowhere")
    make_map().save(tmp_path / "map")
    npz = tmp_path / "map" / "map.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(MapError, match="truncated or corrupt"):
        TopoMap.load(tmp_path / "map")
    make_map().save(tmp_path / "map")
    (tmp_path / "map" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(MapError, match="index.faiss is missing or corrupt"):
        TopoMap.load(tmp_path / "map")


def test_embedding_stage_matches_router_embedding():
    model, tok = tiny_llama(), tiny_tokenizer()
    prompts = ["what is the capital of france", "write a story", "add two plus two", "sum"]
    batched = embed_prompts(model, tok, prompts, pivot=2, batch_size=3, progress=False)
    for i, prompt in enumerate(prompts):
        single = router_embedding(model, encode_prompts(tok, [prompt], model.device), 2).numpy()[0]
        np.testing.assert_allclose(batched[i], single, rtol=1e-4, atol=1e-5)


def test_the_map_has_the_same_bytes_whatever_the_thread_count(tmp_path):
    """The learned router is fitted on one BLAS thread: a map built under 1 or 2 BLAS and torch threads
    is the same file."""
    import hashlib

    import torch
    from threadpoolctl import threadpool_limits

    from ais.routing.topomap import build_map

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 576)).astype(np.float32)  # large enough that the BLAS splits its sums
    rows = [{"category": f"c{i % 9}", "split": "map"} for i in range(3000)]
    digests = []
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with threadpool_limits(limits=threads):
                build_map(rows, vectors, {"hidden_size": 576}, 1.0).save(tmp_path / f"map{threads}")
        finally:
            torch.set_num_threads(previous)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted((tmp_path / f"map{threads}").iterdir())})
    assert digests[0] == digests[1]
