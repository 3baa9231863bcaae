"""Stage `lossless`: speculative decoding verified by the full model; per category, the drafter
that pays on calibration prompts (or none), recorded beside the map in data/drafters.json, and its
speedup on other (test) prompts."""
from pathlib import Path

from ais.api import load
from ais.evaluation.lossless import ABLATIONS, DRAFTERS, measure
from ais.files import write_csv, write_json
from ais.params import get, load_params
from ais.report.plots import plot_lossless
from ais.routing.corpus import prompts_by_category, read_corpus

if __name__ == "__main__":
    params = load_params()
    # exactness is claimed at lossless.dtype (float32): see System.lossless_model. Drafts always
    # hard-skip (a soft-skipped draft costs more than the full model), whatever skip.mode says.
    system = load(dtype=get(params, "lossless.dtype"), mode="hard")
    n = get(params, "lossless.n_per_category")
    held = prompts_by_category(read_corpus(Path("data/corpus.jsonl")), "heldout", 2 * n)
    calibration = {c: p[:n] for c, p in held.items()}
    test = {c: p[n:] for c, p in held.items()}
    per_category, overall, rows, example = measure(
        system.decoder, system.tokenizer, calibration, test, get(params, "lossless.gamma"),
        get(params, "lossless.confidence"), get(params, "lossless.max_new_tokens"), get(params, "lossless.ngram"),
        get(params, "lossless.draft_fraction"), get(params, "lossless.min_speedup"), get(params, "validate.seed"))
    write_json("data/drafters.json", {c: r["drafter"] for c, r in per_category.items()})
    write_json("reports/lossless.json", {**overall, "per_category": per_category, "example": example})
    write_csv("reports/lossless_generations.csv", rows)
    write_csv("reports/lossless.csv", [{"category": c, "chosen": r["drafter"],
                                        **{f"{d}_speedup": v["speedup"] for d, v in r["drafters"].items()},
                                        **{f"{d}_mean_accepted": v["mean_accepted"] for d, v in r["drafters"].items()}}
                                       for c, r in per_category.items()])
    plot_lossless(per_category, [d for d in DRAFTERS + ABLATIONS if d != "none"], "reports/lossless.png",
                  f"lossless speculative decoding, test prompts ({overall['n_test_prompts']}; drafters chosen on "
                  f"{overall['n_calibration_prompts']} others); exact match {overall['exact_match_drafted']}")
    for c, r in per_category.items():
        print(f"lossless {c}: {r['drafter']} x{r['speedup']} "
              + " ".join(f"{d}:x{v['speedup']}/acc{v['mean_accepted']}" for d, v in r["drafters"].items()))
    s = overall["chosen_system"]
    print(f"lossless chosen system on test prompts: x{s['speedup']} (per prompt {s['per_prompt_speedup']} "
          f"[{s['per_prompt_speedup_ci_low']}, {s['per_prompt_speedup_ci_high']}]); exact match of drafted "
          f"generations {overall['exact_match_drafted']} ({overall['n_drafted_generations']})")
