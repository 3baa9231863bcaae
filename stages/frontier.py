"""Stage `frontier`: quality (both held-out splits, per prompt) against the measured speedup of each
plan as the skipped fraction grows: routed, oracle, global and random layer choice in `skip.mode`,
with the original prototype's two plans as points."""
from pathlib import Path

from ais.api import load
from ais.evaluation.frontier import measure_quality, measure_speed, original_plans, summarise
from ais.files import load_npz, write_csv, write_json
from ais.params import get
from ais.report.plots import plot_frontier
from ais.routing.corpus import mixed_prompts, prompts_by_category, read_corpus
from ais.routing.plans import n_layers_to_skip

SPLITS = ("heldout", "heldout_task")

if __name__ == "__main__":
    system = load()
    params = system.params
    n_layers = system.model.config.num_hidden_layers
    corpus = read_corpus(Path("data/corpus.jsonl"))
    n = get(params, "frontier.n_per_category")
    by_split = {split: prompts_by_category(corpus, split, n) for split in SPLITS}
    counts = sorted({n_layers_to_skip(f, n_layers) for f in get(params, "frontier.fractions")})
    importance = load_npz("data/importance.npz", "layer importance", "importance")
    extra = original_plans(n_layers, importance["raw_group_kl"], system.topo.categories)
    seed = get(params, "validate.seed")
    per_prompt = measure_quality(system.decoder, system.tokenizer, by_split, counts,
                                 get(params, "validate.n_continuation"), seed, extra)
    timing_prompts, truth = mixed_prompts(by_split["heldout"], get(params, "frontier.timing_batch"))
    speed = measure_speed(system.decoder, system.tokenizer, timing_prompts, truth, counts, extra,
                          get(params, "throughput.warmup"), get(params, "frontier.repeats"), seed)
    rows = summarise(per_prompt, speed, system.decoder.settings.mode, n_layers, seed)
    write_csv("reports/frontier.csv", rows)
    write_csv("reports/frontier_prompts.csv", per_prompt)
    plot_frontier([r for r in rows if r["split"] == "heldout"], Path("reports/frontier.png"),
                  f"{sum(len(p) for p in by_split['heldout'].values())} held-out prompts of seen tasks; speed: prefill "
                  f"of {len(timing_prompts)} prompts of mixed categories, median of {get(params, 'frontier.repeats')}")
    write_json("reports/frontier.json", {
        split: {f"{r['method']}@{r['n_skipped']}": {k: r[k] for k in ("top1", "top1_ci_low", "top1_ci_high", "kl", "speedup")
                                                    if k in r} for r in rows if r["split"] == split}
        for split in SPLITS})
    for r in rows:
        print(f"frontier {r['split']:>12s} {r['method']:>20s} skip {r['n_skipped']:2d}: top1 {r['top1']:.3f} "
              f"kl {r['kl']:.3f} x{r.get('speedup', float('nan')):.3f}")
