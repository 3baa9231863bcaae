"""A sweep's view: one metric across the experiments of a sweep, against one param, a line per value
of another, from `dvc exp show --json` (DVC's own record of every experiment's params and metrics).

    python -m ais.report.sweep --x skip.fraction --y validate.json:heldout.routed_top1 --by skip.mode
    python -m ais.report.sweep --x plan_map.k --interval --log-x -o reports/plan_map_k.png \
        --y frontier.json:heldout.plan_map@3.minus_global_top1 --y frontier.json:heldout_task.plan_map@3.minus_global_top1

With `--interval` a point has the 95% interval of its metric (the metrics' `<key>_ci_low` and
`<key>_ci_high`); several `--y` give a line each.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from ais.report.plots import plot_sweep


def _dig(node, dotted: str):
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def experiment_rows(show: list[dict], x: str, y: str, by: str | None = None, interval: bool = False) -> list[dict]:
    """{name, x, y, by} per experiment (and the baseline) in `dvc exp show --json` output that has both;
    `y` is `<metrics file name>:<dotted key>`; with `interval`, also {low, high} from the key's
    `_ci_low` / `_ci_high` siblings."""
    metrics_file, key = y.split(":", 1) if ":" in y else ("", y)
    rows = []

    def add(name: str, data: dict | None):
        if not data:
            return
        params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
        metrics = next((v.get("data", {}) for path, v in (data.get("metrics") or {}).items()
                        if not metrics_file or Path(path).name == metrics_file), {})
        xv, yv = _dig(params, x), _dig(metrics, key)
        if isinstance(xv, (int, float)) and isinstance(yv, (int, float)):
            row = {"name": name, "x": xv, "y": yv, "by": _dig(params, by) if by else None}
            if interval:
                row.update(low=_dig(metrics, key + "_ci_low"), high=_dig(metrics, key + "_ci_high"))
            rows.append(row)

    for baseline in show:
        if baseline.get("rev") == "workspace":
            continue
        add(baseline.get("name") or baseline["rev"][:7], baseline.get("data"))
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                add(rev.get("name") or experiment.get("name") or rev["rev"][:7], rev.get("data"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ais.report.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--x", required=True, help="a param, dotted (e.g. skip.fraction)")
    parser.add_argument("--y", required=True, action="append",
                        help="<metrics file>:<dotted key> (e.g. validate.json:heldout.routed_top1); repeat for a line each")
    parser.add_argument("--interval", action="store_true", help="draw each point's 95%% interval (<key>_ci_low/high)")
    parser.add_argument("--log-x", action="store_true", help="a logarithmic x axis (e.g. for K = 2, 4, 8, 16)")
    parser.add_argument("--by", help="a param whose values get a line each (e.g. skip.mode)")
    parser.add_argument("-o", "--out", default="reports/sweep.png")
    args = parser.parse_args(argv)
    show = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    rows = []
    for y in args.y:
        found = experiment_rows(show, args.x, y, args.by, args.interval)
        rows += [{**r, "metric": y if len(args.y) > 1 else None} for r in found]
    if not rows:
        print(f"no experiment has both {args.x} and {', '.join(args.y)}", file=sys.stderr)
        return 2
    plot_sweep(rows, args.x, args.y[0] if len(args.y) == 1 else "metric", args.by, args.out, args.log_x)
    for r in sorted(rows, key=lambda r: (str(r.get("metric")), str(r["by"]), r["x"])):
        print(f"{r['name']}: {args.x}={r['x']}" + (f" {args.by}={r['by']}" if args.by else "")
              + (f" {r['metric']}" if r.get("metric") else "") + f" -> {r['y']}"
              + (f" [{r['low']}, {r['high']}]" if r.get("low") is not None else ""))
    print(f"sweep: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
