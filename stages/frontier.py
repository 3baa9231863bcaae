"""Stage `frontier`: every level of adaptivity under one protocol (full prefill, then the level's
skipping on the generated tokens): quality on both held-out splits, per prompt, against the measured
generation speed at each batch size, as the number of skipped layers grows; the per-token gates it
calibrates are what `ais generate --mode dynamic` runs (data/dynamic_gates.json)."""
from pathlib import Path

from ais.api import GATES, load
from ais.evaluation.anatomy import block_costs
from ais.evaluation.calibration import available_methods
from ais.evaluation.references import FILE as REFERENCE, References
from ais.evaluation.frontier import (dynamic_overheads, frontier_methods, ladder_gaps, measure_quality,
                                     measure_speed, request_calls, summarise)
from ais.files import write_csv, write_json
from ais.params import get
from ais.report.plots import plot_frontier
from ais.routing.corpus import mixed_prompts, prompts_by_category, read_corpus
from ais.routing.budget import n_layers_to_skip

SPLITS = ("heldout", "heldout_task")

if __name__ == "__main__":
    system = load()
    params, decoder = system.params, system.decoder
    n_layers = decoder.engine.n_layers
    corpus = read_corpus(Path("data/corpus.jsonl"))
    n = get(params, "frontier.n_per_category")
    by_split = {split: prompts_by_category(corpus, split, n) for split in SPLITS}
    counts = sorted({n_layers_to_skip(f, n_layers) for f in get(params, "frontier.fractions")})
    seed, n_continuation = get(params, "validate.seed"), None  # the continuations come from the reference stage
    decoder.setup.seed = seed
    calibration = prompts_by_category(corpus, "importance")
    available, left_out = available_methods(decoder, get(params, "frontier.methods"))
    for name, reason in left_out.items():
        print(f"frontier: {name} left out: {reason}")
    timing_prompts, _ = mixed_prompts(by_split["heldout"], get(params, "frontier.timing_prompts"))
    costs = block_costs(decoder.engine, system.tokenizer, timing_prompts[0])  # one table costs every plan
    references = References(REFERENCE, decoder.engine)  # the full model's, computed once by the reference stage
    methods = frontier_methods(decoder, system.tokenizer, available, calibration, n_continuation, costs, references)
    oracle_counts = sorted({n_layers_to_skip(f, n_layers) for f in get(params, "frontier.oracle_fractions")})
    per_prompt = measure_quality(decoder, system.tokenizer, by_split, methods, counts, n_continuation, costs,
                                 oracle_counts, get(params, "frontier.oracle_per_category"), references=references)
    new_tokens = get(params, "frontier.new_tokens")
    speed = measure_speed(decoder, system.tokenizer, timing_prompts, request_calls(decoder, methods, counts),
                          get(params, "frontier.batch_sizes"), new_tokens, get(params, "frontier.warmup"),
                          get(params, "frontier.repeats"), seed, get(params, "frontier.target_iqr"))
    gates = {name: {k: m.gate(decoder.setup.budget(k)) for k in counts if k > 0} for name, m in methods.items()
             if m.per_token}
    min_layer = next(iter(m.min_layer for m in methods.values() if m.per_token), decoder.pivot)
    overheads = dynamic_overheads(decoder.engine, system.tokenizer, timing_prompts[0], min_layer, seed=seed)
    per_token = {name for name, m in methods.items() if m.per_token}
    rows = summarise(per_prompt, speed, decoder.settings.mode, n_layers, seed, per_token)
    gaps = ladder_gaps(per_prompt, seed)
    write_csv("reports/frontier.csv", rows)
    write_csv("reports/ladder.csv", gaps)
    write_csv("reports/frontier_prompts.csv", per_prompt)
    write_json(GATES, {str(k): {"threshold": g.threshold, "min_layer": g.min_layer,
                                "candidates": sorted(g.candidates) if g.candidates is not None else None}
                       for k, g in gates.get("dynamic", {}).items()})
    plot_frontier([r for r in rows if r["split"] == "heldout"], Path("reports/frontier.png"),
                  f"{sum(len(p) for p in by_split['heldout'].values())} held-out prompts of seen tasks, full prefill "
                  f"then skipping; speed: {new_tokens}-token requests, median of {get(params, 'frontier.repeats')}")
    write_json("reports/frontier.json", {
        "methods": list(methods), "left_out": left_out,
        "dynamic_gates": {m: {str(k): {"threshold": g.threshold, "candidates": sorted(g.candidates) if g.candidates else "all"}
                              for k, g in by_count.items()} for m, by_count in gates.items()},
        "dynamic_min_layer": min_layer,
        "dynamic_overheads": overheads,
        "block_costs_ms": {k: round(1000 * v, 4) for k, v in costs.items()},
        "ladder": {f"{g['split']}/{g['higher']}-{g['lower']}@{g['n_skipped']}": {k: v for k, v in g.items() if "difference" in k}
                   for g in gaps},
        **{split: {f"{r['method']}@{r['n_skipped']}": {k: r[k] for k in r if k not in ("split", "method", "mode")}
                   for r in rows if r["split"] == split} for split in SPLITS}})
    for g in gaps:
        print(f"ladder {g['split']:>12s} {g['higher']} - {g['lower']} @{g['n_skipped']}: {g['top1_difference']:+.3f} "
              f"[{g['top1_difference_ci_low']:+.3f}, {g['top1_difference_ci_high']:+.3f}]")
    for r in rows:
        print(f"frontier {r['split']:>12s} {r['method']:>20s} skip {r['n_skipped']:2d} ({r['layers_skipped']:.2f}): "
              f"top1 {r['top1']:.3f} kl {r['kl']:.3f} b1 x{r.get('b1_speedup', float('nan')):.3f}")
