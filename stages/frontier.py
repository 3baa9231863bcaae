"""Stage `frontier`: quality against measured speedup as the skipped fraction grows, for routed,
global and random layer choice in `skip.mode`, with the original prototype's two plans as points."""
from pathlib import Path

from ais.api import load
from ais.files import load_npz, write_json
from ais.routing.corpus import prompts_by_category, read_corpus
from ais.evaluation.frontier import frontier, original_plans
from ais.params import get
from ais.report.plots import plot_frontier
from ais.files import write_csv

if __name__ == "__main__":
    system = load()
    params = system.params
    n = get(params, "frontier.n_per_category")
    by_category = prompts_by_category(read_corpus(Path("data/corpus.jsonl")), "heldout", n)
    timing = [p for ps in by_category.values() for p in ps][: get(params, "frontier.timing_batch")]
    importance = load_npz("data/importance.npz", "layer importance", "importance")
    extra = original_plans(system.model.config.num_hidden_layers, importance["raw_group_kl"], system.topo.categories)
    rows = frontier(system.decoder, system.tokenizer, by_category, get(params, "frontier.fractions"),
                    get(params, "validate.n_continuation"), get(params, "validate.seed"), timing,
                    get(params, "throughput.warmup"), get(params, "frontier.repeats"), extra)
    write_csv("reports/frontier.csv", rows)
    plot_frontier(rows, Path("reports/frontier.png"),
                  f"{sum(len(p) for p in by_category.values())} held-out prompts, {len(by_category)} categories; "
                  f"speed: prefill of {len(timing)} prompts, median of {get(params, 'frontier.repeats')}")
    write_json("reports/frontier.json", {f"{r['method']}@{r['n_skipped']}": {k: r[k] for k in ("top1", "kl", "speedup")}
                                         for r in rows})
    for r in rows:
        print(f"frontier {r['method']:>24s} skip {r['n_skipped']:2d}: top1 {r['top1']:.3f} kl {r['kl']:.3f} x{r['speedup']:.3f}")
