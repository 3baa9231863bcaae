"""The plan map's K sweep on the stored search, in-sample: per K, what stage `plan_map` computes
(clustering, labels, each searched entry's own candidate against the global plan), without
rerunning the search or the frontier. Run in a workspace where `dvc repro plan_map` has run:

    python docs/plan_map_k_sweep.py 2 8 16      # -> reports/plan_map_k.csv, reports/plan_map_k.png

(The out-of-sample sweep is one frontier per K: `dvc exp run --queue -S 'plan_map.k=2,8,16' frontier`.)"""
import json, sys, time
from pathlib import Path
from ais.api import load
from ais.evaluation.plan_search import build_plan_map
from ais.params import get
from ais.routing.budget import n_layers_to_skip
from ais.routing.corpus import read_corpus

system = load()
params, decoder = system.params, system.decoder
rows = read_corpus(Path("data/corpus.jsonl"), "map")
search = json.loads(Path("data/plan_search.json").read_text())
entries = search["entries"]
decoder.setup.seed = seed = get(params, "plan_map.seed")
budgets = sorted({n_layers_to_skip(f, decoder.engine.n_layers) for f in get(params, "plan_map.fractions")} - {0})
out = {}
for k in map(int, sys.argv[1:]):
    t = time.perf_counter()
    _, summary = build_plan_map(decoder, system.tokenizer, [rows[i]["prompt"] for i in entries],
                                [rows[i]["category"] for i in entries], entries, system.topo.embeddings[entries],
                                search["orders"], budgets, k, get(params, "validate.n_continuation"), seed)
    out[k] = summary
    print(k, round(time.perf_counter() - t), {n: (len(r["candidates"]), r["own_minus_global"], r["global_top1"], r["searched_top1"]) for n, r in summary["by_budget"].items()}, flush=True)

# the CSV and the plot (K=4 from the pipeline's own reports/plan_map.json)
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from ais.files import write_csv
from ais.report.plots import save_figure
out[4] = json.loads(Path("reports/plan_map.json").read_text())
rows = [{"k": k, "layers": int(n), "candidates": len(r["candidates"]), **{f"own_minus_global_{x}": r["own_minus_global"][x]
         for x in ("top1", "top1_ci_low", "top1_ci_high")}, "searched_minus_own_top1": r["searched_minus_own"]["top1"]}
        for k, s in sorted(out.items()) for n, r in s["by_budget"].items()]
write_csv("reports/plan_map_k.csv", rows)  # atomically, as every stage writes
fig, ax = plt.subplots(figsize=(5, 3.2))
for n in sorted({r["layers"] for r in rows}):
    pts = [r for r in rows if r["layers"] == n]
    ax.errorbar([r["k"] for r in pts], [r["own_minus_global_top1"] for r in pts],
                yerr=[[r["own_minus_global_top1"] - r["own_minus_global_top1_ci_low"] for r in pts],
                      [r["own_minus_global_top1_ci_high"] - r["own_minus_global_top1"] for r in pts]],
                marker="o", capsize=3, label=f"{n} layers")
ax.axhline(0, color="grey", lw=0.8); ax.set_xscale("log", base=2); ax.set_xlabel("K (candidate plans)")
ax.set_ylabel("own candidate − global, top-1\n(in-sample, 36 map prompts)"); ax.legend(fontsize=8)
fig.tight_layout(); save_figure(fig, "reports/plan_map_k.png")
