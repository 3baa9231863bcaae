"""Stage `datastore`: the full model's greedy replies to `datastore.n_per_category` map prompts per
category (seeded), with their router embeddings -> data/datastore (what the suffix drafter searches
after the request's own context: the replies to its nearest map prompts first); its build time and
size in reports/datastore.json. Map prompts only: no reply to a test prompt can reach a draft."""
import time
from pathlib import Path

from ais.api import load
from ais.decoding.datastore import FILE, Datastore
from ais.evaluation.depth import greedy_continuations
from ais.files import write_json
from ais.params import get
from ais.routing.corpus import read_corpus, sample_per_category
from ais.routing.topomap import MapError

if __name__ == "__main__":
    system = load()
    topo, params = system.topo, system.params
    rows = read_corpus(Path("data/corpus.jsonl"), "map")
    if len(rows) != len(topo):
        raise MapError(f"the map has {len(topo)} entries but the corpus's map split {len(rows)}; rerun `dvc repro map`")
    entries = sample_per_category([r["category"] for r in rows], get(params, "datastore.n_per_category"),
                                  get(params, "datastore.seed"))
    started = time.perf_counter()
    replies = greedy_continuations(system.decoder.engine, system.tokenizer, [rows[i]["prompt"] for i in entries],
                                   get(params, "datastore.max_new_tokens"),
                                   batch_size=get(params, "datastore.batch_size"))
    seconds = time.perf_counter() - started
    store = Datastore([tokens for _, tokens in replies], topo.embeddings[entries], entries, topo.identity)
    store.save(FILE)  # no build time in it: the same bytes on every run (the time is in the report)
    size = sum(p.stat().st_size for p in Path(FILE).iterdir())
    tokens = sum(len(r) for r in store.replies)
    write_json("reports/datastore.json", {"replies": len(store), "tokens": tokens, "bytes": size,
                                          "seconds": round(seconds, 1),
                                          "max_new_tokens": get(params, "datastore.max_new_tokens")})
    print(f"datastore: {len(store)} replies, {tokens} tokens, {size / 1e3:.0f} kB, built in {seconds:.0f} s")
