"""The plan map's K sweep out of sample: plan_map − global top-1 on the frontier at every skipped
count and split, one point per K from DVC's record of the sweep's experiments. Run where the sweep
ran (README, "The plan-defined map"):

    python docs/plan_map_k_frontier.py      # -> reports/plan_map_k_frontier.csv and .png

The first experiment seen at each K is kept (the baseline comes first in `dvc exp show`)."""
import json
import subprocess
import sys

from ais.files import write_csv
from ais.report.sweep import experiment_rows, main as plot

SPLITS, COUNTS, OUT = ("heldout", "heldout_task"), (3, 6, 9), "reports/plan_map_k_frontier"
metrics = [f"frontier.json:{split}.plan_map@{n}.minus_global_top1" for split in SPLITS for n in COUNTS]
show = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], capture_output=True,
                                 text=True, check=True).stdout)
rows = []
for metric in metrics:
    split, n = metric.split(":")[1].split(".")[0], int(metric.split("@")[1].split(".")[0])
    kept = {}
    for r in experiment_rows(show, "plan_map.k", metric, interval=True):
        kept.setdefault(r["x"], r)
    rows += [{"plan_map_k": k, "experiment": r["name"], "split": split, "n_skipped": n,
              "plan_map_minus_global_top1": r["y"], "ci_low": r["low"], "ci_high": r["high"]}
             for k, r in sorted(kept.items())]
write_csv(f"{OUT}.csv", rows)
sys.exit(plot(["--x", "plan_map.k", "--interval", "--log-x", "-o", f"{OUT}.png"]
              + [arg for metric in metrics for arg in ("--y", metric)]))
