"""Stage `throughput`: requests/s (prefill) and tokens/s (greedy generation), full model vs the
routed plan in `skip.mode` in the same run, router cost included."""
from pathlib import Path

import torch

from ais.api import load
from ais.evaluation.throughput import generation_benchmark, prefill_benchmark
from ais.files import write_csv, write_json
from ais.params import get
from ais.routing.corpus import mixed_prompts, prompts_by_category, read_corpus

if __name__ == "__main__":
    system = load()
    params = system.params
    by_category = prompts_by_category(read_corpus(Path("data/corpus.jsonl")), "heldout")
    prompts, _ = mixed_prompts(by_category, sum(len(p) for p in by_category.values()))  # categories interleaved
    warmup, repeats = get(params, "throughput.warmup"), get(params, "throughput.repeats")
    prefill = prefill_benchmark(system.decoder, system.tokenizer, prompts,
                                get(params, "throughput.batch_sizes"), warmup, repeats)
    generation = generation_benchmark(system.decoder, system.tokenizer, prompts,
                                      get(params, "throughput.generate_batch_sizes"),
                                      get(params, "throughput.new_tokens"), warmup,
                                      get(params, "throughput.generate_repeats"))
    write_csv("reports/throughput_prefill.csv", prefill)
    write_csv("reports/throughput_generate.csv", generation)
    write_json("reports/throughput.json", {
        "mode": system.decoder.settings.mode, "device": str(system.model.device), "dtype": str(system.model.dtype), "threads": torch.get_num_threads(),
        "batches": "held-out prompts of all categories, one category after another", "repeats": repeats,
        "warmup": warmup,
        "prefill": {f"B{r['batch_size']}": {k: r[k] for k in ("full_req_per_s", "routed_req_per_s", "speedup_routed",
                                                               "speedup_static_plan", "ideal_speedup",
                                                               "router_fraction_of_full")} for r in prefill},
        "generate": {f"B{r['batch_size']}": {k: r[k] for k in ("full_tok_per_s", "routed_tok_per_s", "speedup_routed",
                                                                "ideal_speedup")} for r in generation},
    })
    for r in prefill:
        print(f"prefill B={r['batch_size']}: {r['full_req_per_s']} -> {r['routed_req_per_s']} req/s "
              f"(x{r['speedup_routed']}, static plan x{r['speedup_static_plan']}, ideal x{r['ideal_speedup']})")
    for r in generation:
        print(f"generate B={r['batch_size']}: {r['full_tok_per_s']} -> {r['routed_tok_per_s']} tok/s (x{r['speedup_routed']})")
