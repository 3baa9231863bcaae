"""Stage `throughput`: mixed traffic (rows of different categories, each with its own plan, one
batch): requests/s of the prefill and tokens/s of generation for the full model, the routed plan in
`skip.mode` (router included), the global plan at the same layer count and the prompt's own plan,
in the same run; and whether each row of a mixed batch generates what the request generates alone (in
float32, and in the model's dtype beside transformers' own `generate` batched and alone)."""
from pathlib import Path

import torch

from ais.api import load
from ais.device import WARMUP_TOKENS
from ais.evaluation.throughput import generation_benchmark, mixed_batch_exactness, prefill_benchmark
from ais.files import write_csv, write_json
from ais.params import get
from ais.routing.corpus import mixed_prompts, prompts_by_category, read_corpus

KEPT = ("repeats", "full_tok_per_s", "routed_tok_per_s", "global_tok_per_s", "prompt_tok_per_s", "speedup_routed",
        "speedup_global", "speedup_prompt", "routed_over_global", "prompt_over_global", "ideal_speedup",
        "categories_in_batch", "plans_in_batch", "layers")

if __name__ == "__main__":
    system = load()
    params = system.params
    by_category = prompts_by_category(read_corpus(Path("data/corpus.jsonl")), "heldout")
    prompts, _ = mixed_prompts(by_category, sum(len(p) for p in by_category.values()))  # categories interleaved
    warmup, repeats = get(params, "throughput.warmup"), get(params, "throughput.repeats")
    new_tokens, sizes = get(params, "throughput.new_tokens"), get(params, "throughput.generate_batch_sizes")
    target_iqr = get(params, "throughput.target_iqr")
    prefill = prefill_benchmark(system.decoder, system.tokenizer, prompts, get(params, "throughput.batch_sizes"),
                                warmup, repeats, target_iqr)
    generation = generation_benchmark(system.decoder, system.tokenizer, prompts, sizes, new_tokens, warmup,
                                      get(params, "throughput.generate_repeats"), target_iqr)
    # exactness on the largest batch (it holds the smaller ones' rows): in float32, where it is claimed, and in
    # the stage's dtype beside what batching does to transformers' own generate there
    dtypes = {str(system.model.dtype).removeprefix("torch."): system}
    dtypes.setdefault("float32", load(dtype="float32"))
    exactness = {name: mixed_batch_exactness(s.decoder, s.tokenizer, prompts, max(sizes), new_tokens)
                 for name, s in dtypes.items()}
    write_csv("reports/throughput_prefill.csv", [{k: v for k, v in r.items() if not isinstance(v, dict)} for r in prefill])
    write_csv("reports/throughput_generate.csv", [{k: v for k, v in r.items() if not isinstance(v, dict)}
                                                  for r in generation])
    write_json("reports/throughput.json", {
        "mode": system.decoder.settings.mode, "plan": system.decoder.settings.plan, "device": str(system.model.device),
        "dtype": str(system.model.dtype), "threads": torch.get_num_threads(),
        "batches": "held-out prompts of seen tasks, categories interleaved (every row of a batch its own category "
                   "up to 9 rows)", "repeats": repeats, "generate_repeats": get(params, "throughput.generate_repeats"),
        "warmup": warmup, "warmup_tokens": min(WARMUP_TOKENS, new_tokens), "target_iqr": target_iqr,
        "prefill": {f"B{r['batch_size']}": {k: r[k] for k in ("repeats", "full_req_per_s", "routed_req_per_s", "global_req_per_s",
                                                               "speedup_routed", "speedup_global", "routed_over_global",
                                                               "ideal_speedup", "router_fraction_of_full", "padding_share",
                                                               "real_tokens", "full_real_tok_per_s")} for r in prefill},
        "generate": {f"B{r['batch_size']}": {k: r[k] for k in KEPT} for r in generation},
        "mixed_batch_exactness": exactness,
        "mixed_batch_identical_share": min(exactness["float32"][k]["identical_share"] for k in ("routed", "prompt")),
    })
    for r in prefill:
        print(f"prefill B={r['batch_size']}: full {r['full_req_per_s']}, routed {r['routed_req_per_s']}, global "
              f"{r['global_req_per_s']} req/s (routed/global x{r['routed_over_global']['median']})")
    for r in generation:
        print(f"generate B={r['batch_size']}: full {r['full_tok_per_s']}, routed {r['routed_tok_per_s']}, global "
              f"{r['global_tok_per_s']}, prompt {r['prompt_tok_per_s']} tok/s; routed/global "
              f"x{r['routed_over_global']['median']} [{r['routed_over_global']['q1']}, {r['routed_over_global']['q3']}]")
    for dtype, e in exactness.items():
        print(f"mixed batch = alone ({dtype}): " + ", ".join(f"{k} {v['identical_share']}" for k, v in e.items()))
