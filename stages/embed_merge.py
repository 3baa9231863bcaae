"""Stage `embed_merge`: the shards of `embed` joined in corpus order -> data/embeddings.npz."""
from pathlib import Path

from ais.files import save_npz
from ais.params import get, load_params
from ais.routing.embedding import merge_shards

if __name__ == "__main__":
    params = load_params()
    merged = merge_shards([Path(f"data/embeddings/shard-{i}.npz") for i in get(params, "embed.shards")],
                          Path("data/corpus.jsonl"))
    save_npz("data/embeddings.npz", **merged)
    print(f"embed_merge: {len(merged['embeddings'])} prompts from {len(get(params, 'embed.shards'))} shards")
