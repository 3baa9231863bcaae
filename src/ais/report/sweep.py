"""A sweep's view: one metric across the experiments of a sweep, against one param, a line per value
of another, from `dvc exp show --json` (DVC's own record of every experiment's params and metrics).

    python -m ais.report.sweep --x skip.fraction --y validate.json:heldout.routed_top1 --by skip.mode
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


def experiment_rows(show: list[dict], x: str, y: str, by: str | None = None) -> list[dict]:
    """{name, x, y, by} per experiment (and the baseline) in `dvc exp show --json` output that has both;
    `y` is `<metrics file name>:<dotted key>`."""
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
            rows.append({"name": name, "x": xv, "y": yv, "by": _dig(params, by) if by else None})

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
    parser.add_argument("--y", required=True, help="<metrics file>:<dotted key> (e.g. validate.json:heldout.routed_top1)")
    parser.add_argument("--by", help="a param whose values get a line each (e.g. skip.mode)")
    parser.add_argument("-o", "--out", default="reports/sweep.png")
    args = parser.parse_args(argv)
    show = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    rows = experiment_rows(show, args.x, args.y, args.by)
    if not rows:
        print(f"no experiment has both {args.x} and {args.y}", file=sys.stderr)
        return 2
    plot_sweep(rows, args.x, args.y, args.by, args.out)
    for r in sorted(rows, key=lambda r: (str(r["by"]), r["x"])):
        print(f"{r['name']}: {args.x}={r['x']}" + (f" {args.by}={r['by']}" if args.by else "") + f" -> {r['y']}")
    print(f"sweep: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
