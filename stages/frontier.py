"""Stage `frontier`: quality against measured speedup as the skipped fraction grows, for routed,
global and random layer choice, with the original prototype's two plans as points."""
from pathlib import Path

from ais.api import load
from ais.atomic import load_npz, write_json
from ais.corpus import prompts_by_category, read_corpus
from ais.frontier import frontier, original_plans
from ais.params import get
from ais.plots import plot_frontier
from ais.report_io import write_csv

if __name__ == "__main__":
    system = load(mode="hard")
    params = system.params
    n = get(params, "frontier.n_per_category", int, lo=1)
    by_category = prompts_by_category(read_corpus(Path("data/corpus.jsonl")), "heldout", n)
    timing = [p for ps in by_category.values() for p in ps][: get(params, "frontier.timing_batch", int, lo=1)]
    importance = load_npz("data/importance.npz", "layer importance", "importance")
    extra = original_plans(system.model.config.num_hidden_layers, importance["raw_group_kl"], system.topo.categories)
    rows = frontier(system.decoder, system.tokenizer, by_category, get(params, "frontier.fractions", list),
                    get(params, "validate.n_continuation", int, lo=0), get(params, "validate.seed", int), timing,
                    get(params, "throughput.warmup", int, lo=0), get(params, "frontier.repeats", int, lo=1), extra)
    write_csv("reports/frontier.csv", rows)
    plot_frontier(rows, Path("reports/frontier.png"),
                  f"{sum(len(p) for p in by_category.values())} held-out prompts, {len(by_category)} categories; "
                  f"speed: prefill of {len(timing)} prompts, median of {get(params, 'frontier.repeats', int)}")
    write_json("reports/frontier.json", {f"{r['method']}@{r['n_skipped']}": {k: r[k] for k in ("top1", "kl", "speedup")}
                                         for r in rows})
    for r in rows:
        print(f"frontier {r['method']:>24s} skip {r['n_skipped']:2d}: top1 {r['top1']:.3f} kl {r['kl']:.3f} x{r['speedup']:.3f}")
