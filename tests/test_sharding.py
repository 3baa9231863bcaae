"""The embed stage sharded over machines: the shards' merge is the unsharded result bit for bit."""
import json

import numpy as np
import pytest

from ais.files import save_npz, sha256_file
from ais.routing.embedding import embed_and_score, embed_batches, embed_prompts, length_batches, merge_shards, shard_of
from conftest import tiny_llama, tiny_tokenizer

WORDS = "the a is of what write sum summarize story code add two plus capital france paris number".split()


@pytest.mark.parametrize("scores", [False, True])
def test_sharded_embeddings_merge_to_the_unsharded_ones_bit_for_bit(tmp_path, scores):
    model, tok = tiny_llama(seed=8), tiny_tokenizer()
    prompts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 9)) for i in range(23)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    whole = embed_and_score(model, tok, prompts, 2, batch_size=4, progress=False) if scores else \
        (embed_prompts(model, tok, prompts, 2, batch_size=4, progress=False), None)
    batches = length_batches(prompts, 4)
    paths = []
    for shard in range(3):
        indices, vectors, layer_scores = embed_batches(model, tok, prompts, shard_of(batches, shard, 3), 2,
                                                       scores=scores, progress=False)
        paths.append(tmp_path / f"shard-{shard}.npz")
        save_npz(paths[-1], indices=indices, embeddings=vectors, identity=np.array("{}"),
                 corpus_sha256=np.array(sha256_file(corpus)),
                 **({"prompt_scores": layer_scores} if scores else {}))
    merged = merge_shards(paths, corpus)
    assert np.array_equal(merged["embeddings"], whole[0])
    assert (merged.get("prompt_scores") is None) == (not scores)
    if scores:
        assert np.array_equal(merged["prompt_scores"], whole[1])
    with pytest.raises(ValueError, match="do not cover the corpus exactly once"):
        merge_shards(paths[:2], corpus)
    with pytest.raises(ValueError, match="need 0 <= shard < num_shards"):
        shard_of(batches, 3, 3)
