"""Another model's reports are kept from its experiment's own commit, exactly as the pipeline wrote them."""
import json
import subprocess

import pytest

from ais.report.models import experiment_ref, keep_reports


def test_reports_of_a_run_are_kept_under_reports_models(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "reports/models/other").mkdir(parents=True)
    (tmp_path / "reports/summary.json").write_text(json.dumps({"source": "qwen"}))
    (tmp_path / "reports/README.md").write_text("# Results\n")
    (tmp_path / "reports/models/other/summary.json").write_text("{}")
    (tmp_path / "reports/by_hand.csv").write_text("a sweep's table, committed by hand\n")
    (tmp_path / "params.yaml").write_text("model:\n  source: qwen\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  summary:\n    cmd: x\n    metrics:\n      - reports/summary.json:\n"
                                       "          cache: false\n  report:\n    cmd: y\n    outs:\n      - reports/README.md\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(git + ["add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "run"], cwd=tmp_path, check=True)
    subprocess.run(["git", "update-ref", "refs/exps/ab/cdef/model-qwen", "HEAD"], cwd=tmp_path, check=True)
    import os

    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        ref = experiment_ref("model-qwen")
        with pytest.raises(ValueError, match="no DVC experiment named 'nothing'"):
            experiment_ref("nothing")
    finally:
        os.chdir(here)
    target = keep_reports(ref, "qwen", tmp_path)
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "params.yaml", "summary.json"]  # not other models, nor files no stage wrote
    assert json.loads((target / "summary.json").read_text()) == {"source": "qwen"}
