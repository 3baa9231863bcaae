"""Stage `corpus`: the labelled prompt corpus with its disjoint splits -> data/corpus.jsonl."""
from pathlib import Path

from ais.files import write_json
from ais.routing.corpus import (build_corpus, corpus_summary, dolly_examples, fetch_bigbench, load_categories,
                                read_tasks, request_examples, write_jsonl)
from ais.params import get, load_params

if __name__ == "__main__":
    params = load_params()
    source = get(params, "corpus.source")
    sizes = {key: get(params, f"corpus.{key}") for key in ("n_importance", "n_heldout", "n_heldout_task")}
    n = get(params, "corpus.n")
    max_chars = get(params, "corpus.max_chars")
    seed = get(params, "corpus.seed")
    requests = get(params, "corpus.path")  # a dep of the stage whatever the source (it is read for jsonl only)
    if source == "bigbench":
        specs = load_categories(get(params, "corpus.categories"))
        archive = get(params, "corpus.archive")
        archive = fetch_bigbench() if archive == "auto" else Path(archive)
        examples = read_tasks(archive, {s.task for s in specs})
    else:
        if source == "jsonl":
            specs, examples = request_examples(requests, sizes["n_importance"] + sizes["n_heldout"] + 1)
        else:
            specs, examples = dolly_examples()
        if sizes["n_heldout_task"]:
            print(f"corpus: {source} has no task structure, so the held-out-by-task split is empty")
            sizes["n_heldout_task"] = 0
    rows = build_corpus(specs, examples, n=n, max_chars=max_chars, seed=seed, **sizes)
    write_jsonl(Path("data/corpus.jsonl"), rows)
    summary = corpus_summary(rows)
    write_json("reports/corpus.json", summary)
    print("corpus: " + ", ".join(f"{k} {v['n']}" for k, v in summary["splits"].items()))
