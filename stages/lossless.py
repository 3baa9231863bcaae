"""Stage `lossless`: speculative decoding verified by the full model, against transformers `generate`
(greedy and prompt lookup, bfloat16 and float32) on the same prompts; per category, the drafter
that pays on calibration prompts (or none), recorded beside the map in data/drafters.json, and its
speedup on other (test) prompts; exactness in both dtypes and the rounding bound of bfloat16."""
from pathlib import Path

from ais.api import load
from ais.decoding.datastore import FILE as DATASTORE, Datastore
from ais.device import dtype_name
from ais.evaluation.lossless import REFERENCE_DTYPE, measure
from ais.files import write_csv, write_json
from ais.model.loading import load_model
from ais.params import get, load_params
from ais.report.plots import plot_lossless
from ais.routing.corpus import prompts_by_category, read_corpus

STRICT = "float32"  # the strict mode (every speedup is against `generate` in REFERENCE_DTYPE, bfloat16)

if __name__ == "__main__":
    params = load_params()
    system = load(mode="hard")  # drafts always hard-skip (a soft-skipped draft costs more than the full model)
    device = get(params, "model.device")
    system_dtype = dtype_name(system.lossless_model().dtype)
    dtypes = dict.fromkeys([system_dtype, REFERENCE_DTYPE] + ([STRICT] if get(params, "lossless.strict") else []))
    models = {d: system.model if dtype_name(system.model.dtype) == d else load_model(Path("data/model"), d, device)[0]
              for d in dtypes}
    n = get(params, "lossless.n_per_category")
    corpus = read_corpus(Path("data/corpus.jsonl"))
    held = prompts_by_category(corpus, "heldout", 2 * n)
    calibration = {c: p[:n] for c, p in held.items()}
    test = {"heldout": {c: p[n:] for c, p in held.items()}}  # and prompts of tasks the map never saw, where there are
    unseen = prompts_by_category(corpus, "heldout_task", n)
    if unseen:
        test["heldout_task"] = unseen
    settings = {k: get(params, f"lossless.{k}") for k in ("gamma", "confidence", "max_new_tokens", "ngram",
                                                          "draft_fraction", "clasp_interval", "min_speedup", "drafters", "ablations",
                                                          "suffix_factor", "suffix_probability", "suffix_neighbours",
                                                          "lookup_sweep")}
    datastore = Datastore.load(DATASTORE, system.topo.identity)
    per_category, overall, rows, example = measure(system.decoder, system.tokenizer, models, calibration, test,
                                                   settings, system_dtype, get(params, "validate.seed"),
                                                   datastore=datastore)
    write_json("data/drafters.json", overall["chosen"])
    write_json("reports/lossless.json", {**overall, "per_category": per_category, "example": example})
    write_csv("reports/lossless_generations.csv", rows)
    write_csv("reports/lossless.csv", [{"category": c, "system_speedup": r[f"{system_dtype}/system"], **r}
                                       for c, r in per_category.items()])
    exact = overall["exactness"]
    plot_lossless(per_category, system_dtype, "reports/lossless.png",
                  f"lossless decoding, {overall['n_test_prompts']} test prompts (drafters chosen on "
                  f"{overall['n_calibration_prompts']} others); identical to generate: "
                  + ", ".join(f"{d} {e['identical_share']}" for d, e in exact.items()))
    for c, r in per_category.items():
        print(f"lossless {c}: {r['drafter']} " + " ".join(f"{k}:x{v}" for k, v in r.items() if "/" in k and k != "speedup_vs"))
    s = overall["system"]["vs_generate_bf16"]
    print(f"lossless: transformers' prompt lookup fastest at prompt_lookup_num_tokens={overall['lookup']} "
          f"({overall['lookup_sweep_tok_per_s']} tok/s on the calibration prompts)")
    for name, d in overall["decoders"][system_dtype].items():
        if "vs_prompt_lookup" in d:
            v, g = d["vs_prompt_lookup"], d["vs_generate_bf16"]
            print(f"lossless {name}: x{v['speedup']} [{v['speedup_ci_low']}, {v['speedup_ci_high']}] of prompt lookup, "
                  f"x{g['speedup']} [{g['speedup_ci_low']}, {g['speedup_ci_high']}] of generate")
    print(f"lossless system ({system_dtype}) on test prompts: x{s['speedup']} against generate bfloat16 "
          f"(per prompt {s['per_prompt_speedup']} [{s['per_prompt_speedup_ci_low']}, {s['per_prompt_speedup_ci_high']}]); "
          + "; ".join(f"{d}: identical {e['identical_share']}, {e['n_divergent']} divergent, all below the bound "
                      f"{e['bound']}: {e['all_divergences_below_bound']}" for d, e in exact.items()))
