"""Stage `frontier`: every level of adaptivity under one protocol (full prefill, then the level's
skipping on the generated tokens): quality on both held-out splits, per prompt, against the measured
generation speed at batch 1 and 4, as the number of skipped layers grows."""
from pathlib import Path

from ais.api import load
from ais.evaluation.frontier import (CALM, DYNAMIC, calibrate_gates, dynamic_candidates, dynamic_overheads, ladder_gaps,
                                     measure_quality, measure_speed, original_plans, request_calls, summarise)
from ais.files import load_npz, write_csv, write_json
from ais.params import get
from ais.report.plots import plot_frontier
from ais.routing.corpus import mixed_prompts, prompts_by_category, read_corpus
from ais.routing.plans import n_layers_to_skip

SPLITS = ("heldout", "heldout_task")

if __name__ == "__main__":
    system = load()
    params, decoder = system.params, system.decoder
    n_layers = system.model.config.num_hidden_layers
    corpus = read_corpus(Path("data/corpus.jsonl"))
    n = get(params, "frontier.n_per_category")
    by_split = {split: prompts_by_category(corpus, split, n) for split in SPLITS}
    counts = sorted({n_layers_to_skip(f, n_layers) for f in get(params, "frontier.fractions")})
    importance = load_npz("data/importance.npz", "layer importance", "importance")
    extra = original_plans(n_layers, importance["raw_group_kl"], system.topo.categories)
    seed, n_continuation = get(params, "validate.seed"), get(params, "validate.n_continuation")
    calibration = [p for ps in prompts_by_category(corpus, "importance").values() for p in ps]
    min_layer = system.dynamic_gate().min_layer
    gates = {DYNAMIC: calibrate_gates(system.model, system.tokenizer, calibration, counts, n_continuation, min_layer,
                                      {n: dynamic_candidates(decoder, n) for n in counts}),
             CALM: calibrate_gates(system.model, system.tokenizer, calibration, counts, n_continuation, min_layer, {})}
    oracle_counts = sorted({n_layers_to_skip(f, n_layers) for f in get(params, "frontier.oracle_fractions")})
    per_prompt = measure_quality(decoder, system.tokenizer, by_split, counts, n_continuation, seed, extra, gates,
                                 oracle_counts, get(params, "frontier.oracle_per_category"))
    timing_prompts, _ = mixed_prompts(by_split["heldout"], get(params, "frontier.timing_prompts"))
    new_tokens = get(params, "frontier.new_tokens")
    speed = measure_speed(decoder, system.tokenizer, timing_prompts, request_calls(decoder, counts, gates[DYNAMIC], new_tokens),
                          get(params, "frontier.batch_sizes"), new_tokens, get(params, "frontier.warmup"),
                          get(params, "frontier.repeats"), seed)
    overheads = dynamic_overheads(system.model, system.tokenizer, timing_prompts[0], min_layer, seed=seed)
    rows = summarise(per_prompt, speed, decoder.settings.mode, n_layers, seed)
    gaps = ladder_gaps(per_prompt, seed)
    write_csv("reports/frontier.csv", rows)
    write_csv("reports/ladder.csv", gaps)
    write_csv("reports/frontier_prompts.csv", per_prompt)
    plot_frontier([r for r in rows if r["split"] == "heldout"], Path("reports/frontier.png"),
                  f"{sum(len(p) for p in by_split['heldout'].values())} held-out prompts of seen tasks, full prefill "
                  f"then skipping; speed: {new_tokens}-token requests, median of {get(params, 'frontier.repeats')}")
    write_json("reports/frontier.json", {
        "dynamic_gates": {m: {str(k): {"threshold": g.threshold, "candidates": sorted(g.candidates) if g.candidates else "all"}
                              for k, g in by_count.items()} for m, by_count in gates.items()},
        "dynamic_min_layer": min_layer,
        "dynamic_overheads": overheads,
        "ladder": {f"{g['split']}/{g['higher']}-{g['lower']}@{g['n_skipped']}": {k: v for k, v in g.items() if "difference" in k}
                   for g in gaps},
        **{split: {f"{r['method']}@{r['n_skipped']}": {k: r[k] for k in r if k not in ("split", "method", "mode")}
                   for r in rows if r["split"] == split} for split in SPLITS}})
    for g in gaps:
        print(f"ladder {g['split']:>12s} {g['higher']} - {g['lower']} @{g['n_skipped']}: {g['top1_difference']:+.3f} "
              f"[{g['top1_difference_ci_low']:+.3f}, {g['top1_difference_ci_high']:+.3f}]")
    for r in rows:
        print(f"frontier {r['split']:>12s} {r['method']:>20s} skip {r['n_skipped']:2d} ({r['layers_skipped']:.2f}): "
              f"top1 {r['top1']:.3f} kl {r['kl']:.3f} b1 x{r.get('b1_speedup', float('nan')):.3f} "
              f"b4 x{r.get('b4_speedup', float('nan')):.3f}")
