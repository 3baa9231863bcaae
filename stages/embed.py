"""Stage `embed@<shard>`: the router embeddings of one shard of the corpus prompts (every
`len(embed.shards)`-th batch of one global batching) -> data/embeddings/shard-<i>.npz; with
`map.prompt_scores`, also each prompt's own layer scores (block influence) from one full forward.
`embed_merge` joins the shards into data/embeddings.npz, bit for bit the unsharded result."""
import argparse
import json
from pathlib import Path

import numpy as np

from ais.files import save_npz, sha256_file
from ais.model.loading import load_model, model_identity
from ais.params import ParamsError, get, load_params
from ais.routing.corpus import read_corpus
from ais.routing.embedding import embed_batches, length_batches, resolve_pivot, shard_of

CORPUS = Path("data/corpus.jsonl")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shard", type=int, default=0, help="which shard of embed.shards to compute (default 0)")
    args = parser.parse_args()
    params = load_params()
    shards = get(params, "embed.shards")
    if args.shard not in shards:
        raise ParamsError(f"--shard {args.shard} is not one of embed.shards {shards}")
    model, tokenizer = load_model("data/model", get(params, "model.dtype"), get(params, "model.device"))
    pivot = resolve_pivot(get(params, "router.pivot_layer"), model.config.num_hidden_layers)
    pooling = get(params, "router.pooling")
    prompts = [r["prompt"] for r in read_corpus(CORPUS)]
    batches = shard_of(length_batches(prompts, get(params, "router.batch_size")), args.shard, len(shards))
    indices, vectors, scores = embed_batches(model, tokenizer, prompts, batches, pivot, pooling,
                                             scores=get(params, "map.prompt_scores"))
    identity = {**model_identity(model), "pivot_layer": pivot, "pooling": pooling, "dtype": str(model.dtype)}
    save_npz(f"data/embeddings/shard-{args.shard}.npz", indices=indices, embeddings=vectors,
             identity=np.array(json.dumps(identity, sort_keys=True)), corpus_sha256=np.array(sha256_file(CORPUS)),
             **({"prompt_scores": scores} if scores is not None else {}))
    print(f"embed shard {args.shard} of {len(shards)}: {len(indices)} prompts x {vectors.shape[1]} at pivot {pivot} "
          f"({pooling} pooling)" + (f", layer scores x {scores.shape[1]}" if scores is not None else ""))
