"""Stage `lossless`: speculative decoding verified by the full model; per category, the drafter
that pays (or none), recorded beside the map in data/drafters.json."""
from pathlib import Path

from ais.api import load
from ais.atomic import write_json
from ais.corpus import prompts_by_category, read_corpus
from ais.lossless import ABLATIONS, DRAFTERS, measure
from ais.params import get, load_params
from ais.plots import plot_lossless
from ais.report_io import write_csv

if __name__ == "__main__":
    params = load_params()
    # exactness is claimed at lossless.dtype (float32): see System.lossless_model
    system = load(dtype=get(params, "lossless.dtype", str, choices=("float32", "float64", "bfloat16", "float16")), mode="hard")
    n = get(params, "lossless.n_per_category", int, lo=1)
    by_category = prompts_by_category(read_corpus(Path("data/corpus.jsonl")), "heldout", n)
    per_category, overall, example = measure(
        system.decoder, system.tokenizer, by_category, get(params, "lossless.gamma", int, lo=1),
        get(params, "lossless.confidence", float, lo=0, hi=1), get(params, "lossless.max_new_tokens", int, lo=1),
        get(params, "lossless.ngram", int, lo=1), get(params, "lossless.draft_fraction", float, lo=0, hi=1, hi_open=True),
        get(params, "lossless.min_speedup", float, lo=0))
    write_json("data/drafters.json", {c: r["drafter"] for c, r in per_category.items()})
    write_json("reports/lossless.json", {**overall, "per_category": per_category, "example": example})
    write_csv("reports/lossless.csv", [{"category": c, **{f"{d}_speedup": v["speedup"] for d, v in r["drafters"].items()},
                                        **{f"{d}_mean_accepted": v["mean_accepted"] for d, v in r["drafters"].items()}}
                                       for c, r in per_category.items()])
    plot_lossless(per_category, [d for d in DRAFTERS + ABLATIONS if d != "none"], "reports/lossless.png",
                  f"lossless speculative decoding ({overall['n_generations']} generations, exact match "
                  f"{overall['exact_match_all_drafters']}); gamma {overall['gamma']}")
    for c, r in per_category.items():
        print(f"lossless {c}: {r['drafter']} x{r['speedup']} exact {r['exact_match']} "
              + " ".join(f"{d}:x{v['speedup']}/acc{v['mean_accepted']}" for d, v in r["drafters"].items()))
    print("lossless overall: " + " ".join(f"{d}:x{v['speedup']}" for d, v in overall["drafters"].items()))
    print(f"lossless: exact match over all drafters {overall['exact_match_all_drafters']} ({overall['n_generations']} generations)")
