"""Stage `lossless`: speculative decoding verified by the full model; per category, the drafter
that pays (or none), recorded beside the map in data/drafters.json."""
from pathlib import Path

from ais.api import load
from ais.files import write_json
from ais.routing.corpus import prompts_by_category, read_corpus
from ais.evaluation.lossless import ABLATIONS, DRAFTERS, measure
from ais.params import get, load_params
from ais.report.plots import plot_lossless
from ais.files import write_csv

if __name__ == "__main__":
    params = load_params()
    # exactness is claimed at lossless.dtype (float32): see System.lossless_model. Drafts always
    # hard-skip (a soft-skipped draft costs more than the full model), whatever skip.mode says.
    system = load(dtype=get(params, "lossless.dtype"), mode="hard")
    n = get(params, "lossless.n_per_category")
    by_category = prompts_by_category(read_corpus(Path("data/corpus.jsonl")), "heldout", n)
    per_category, overall, example = measure(
        system.decoder, system.tokenizer, by_category, get(params, "lossless.gamma"),
        get(params, "lossless.confidence"), get(params, "lossless.max_new_tokens"),
        get(params, "lossless.ngram"), get(params, "lossless.draft_fraction"),
        get(params, "lossless.min_speedup"))
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
