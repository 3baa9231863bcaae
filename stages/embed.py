"""Stage `embed`: router embeddings of every corpus prompt -> data/embeddings.npz."""
import json
from pathlib import Path

import numpy as np

from ais.files import save_npz
from ais.routing.corpus import read_corpus
from ais.files import sha256_file
from ais.model.loading import load_model, model_identity
from ais.params import get, load_params
from ais.routing.embedding import embed_prompts, resolve_pivot

CORPUS = Path("data/corpus.jsonl")

if __name__ == "__main__":
    params = load_params()
    model, tokenizer = load_model("data/model", get(params, "model.dtype"), get(params, "model.device"))
    pivot = resolve_pivot(get(params, "router.pivot_layer"), model.config.num_hidden_layers)
    pooling = get(params, "router.pooling")
    rows = read_corpus(CORPUS)
    vectors = embed_prompts(model, tokenizer, [r["prompt"] for r in rows], pivot, pooling,
                            batch_size=get(params, "router.batch_size"))
    identity = {**model_identity(model), "pivot_layer": pivot, "pooling": pooling, "dtype": str(model.dtype)}
    save_npz("data/embeddings.npz", embeddings=vectors, identity=np.array(json.dumps(identity, sort_keys=True)),
             corpus_sha256=np.array(sha256_file(CORPUS)))
    print(f"embed: {vectors.shape[0]} prompts x {vectors.shape[1]} at pivot {pivot} ({pooling} pooling)")
