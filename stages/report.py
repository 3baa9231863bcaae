"""Stage `report`: reports/README.md, the headline tables generated from the metrics."""
from pathlib import Path

from ais.files import write_text
from ais.params import load_params
from ais.report.page import build_report

if __name__ == "__main__":
    write_text("reports/README.md", build_report(Path("reports"), load_params()))
    print("report: reports/README.md")
