"""Stage `report`: reports/README.md, the headline tables generated from the metrics, and this model's
summary (reports/summary.json), beside the other models' runs kept in reports/models/ (their reports
and params, summarised here by the same code)."""
from pathlib import Path

from ais.files import write_json, write_text
from ais.params import load_params
from ais.report.page import build_report, model_summary

if __name__ == "__main__":
    params = load_params()
    summary = model_summary(Path("reports"), params)
    # each other model's kept reports, summarised by this code with the params that run used
    others = [model_summary(p.parent, load_params(p)) for p in sorted(Path("reports/models").glob("*/params.yaml"))
              if p.parent.name != summary["source"]]
    write_json("reports/summary.json", summary)
    write_text("reports/README.md", build_report(Path("reports"), params, others))
    print(f"report: reports/README.md, reports/summary.json ({len(others)} other models beside it)")
