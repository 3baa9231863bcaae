"""Stage `embed`: every corpus prompt's router embedding (the router's layers only) -> data/embeddings.npz;
with `map.prompt_scores`, also its own layer scores (block influence, for the neighbours plans) from
one full forward each."""
import json
from pathlib import Path

import numpy as np

from ais.files import save_npz, sha256_file
from ais.model.loading import load_model, model_identity
from ais.params import get, load_params
from ais.routing.corpus import read_corpus
from ais.routing.embedding import embed_and_score, embed_prompts, resolve_pivot

CORPUS = Path("data/corpus.jsonl")

if __name__ == "__main__":
    params = load_params()
    model, tokenizer = load_model("data/model", get(params, "model.dtype"), get(params, "model.device"))
    pivot = resolve_pivot(get(params, "router.pivot_layer"), model.config.num_hidden_layers)
    pooling = get(params, "router.pooling")
    rows = read_corpus(CORPUS)
    prompts, batch_size = [r["prompt"] for r in rows], get(params, "router.batch_size")
    if get(params, "map.prompt_scores"):
        vectors, scores = embed_and_score(model, tokenizer, prompts, pivot, pooling, batch_size)
        extra = {"prompt_scores": scores}
    else:
        vectors, extra = embed_prompts(model, tokenizer, prompts, pivot, pooling, batch_size), {}
    identity = {**model_identity(model), "pivot_layer": pivot, "pooling": pooling, "dtype": str(model.dtype)}
    save_npz("data/embeddings.npz", embeddings=vectors, identity=np.array(json.dumps(identity, sort_keys=True)),
             corpus_sha256=np.array(sha256_file(CORPUS)), **extra)
    print(f"embed: {vectors.shape[0]} prompts x {vectors.shape[1]} at pivot {pivot} ({pooling} pooling)"
          + (f", layer scores x {extra['prompt_scores'].shape[1]}" if extra else ""))
