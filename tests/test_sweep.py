"""A sweep's view reads DVC's record of the experiments."""
from ais.report.sweep import experiment_rows

SHOW = [
    {"rev": "workspace", "data": {}},
    {"rev": "abc1234", "name": "main", "data": {
        "params": {"params.yaml": {"data": {"skip": {"fraction": 0.1, "mode": "hard"}}}},
        "metrics": {"reports/validate.json": {"data": {"heldout": {"routed_top1": 0.7}}}}},
     "experiments": [{"name": "exp-a", "revs": [{"rev": "def5678", "name": "exp-a", "data": {
         "params": {"params.yaml": {"data": {"skip": {"fraction": 0.2, "mode": "soft"}}}},
         "metrics": {"reports/validate.json": {"data": {"heldout": {"routed_top1": 0.9}}},
                     "reports/map.json": {"data": {"heldout": {"routed_top1": "not this file"}}}}}}]},
                     {"name": "failed", "revs": [{"rev": "0000000", "name": "failed", "data": None}]}]},
]


def test_a_metric_against_a_param_per_experiment():
    rows = experiment_rows(SHOW, "skip.fraction", "validate.json:heldout.routed_top1", "skip.mode")
    assert rows == [{"name": "main", "x": 0.1, "y": 0.7, "by": "hard"}, {"name": "exp-a", "x": 0.2, "y": 0.9, "by": "soft"}]
    assert experiment_rows(SHOW, "skip.alpha", "validate.json:heldout.routed_top1") == []


def test_a_gap_with_its_interval_plotted_against_k(tmp_path):
    from ais.report.plots import plot_sweep

    show = [{"rev": "abc1234", "name": "main", "data": {
        "params": {"params.yaml": {"data": {"plan_map": {"k": 4}}}},
        "metrics": {"reports/frontier.json": {"data": {"heldout": {"plan_map@3": {
            "minus_global_top1": 0.01, "minus_global_top1_ci_low": -0.02, "minus_global_top1_ci_high": 0.04}}}}}}}]
    rows = experiment_rows(show, "plan_map.k", "frontier.json:heldout.plan_map@3.minus_global_top1", interval=True)
    assert rows == [{"name": "main", "x": 4, "y": 0.01, "by": None, "low": -0.02, "high": 0.04}]
    plot_sweep(rows, "plan_map.k", "gap", None, tmp_path / "k.png", log_x=True)
    assert (tmp_path / "k.png").is_file()


def test_a_stage_run_in_a_copy_of_the_repository_imports_the_copys_code(tmp_path):
    # DVC runs an experiment's stages in a copy (.dvc/tmp/exps) and hashes the copy's src/; setup.sh's
    # .pth makes `import ais` find that copy rather than the workspace the package was installed from
    import subprocess
    import sys

    (tmp_path / "src/ais").mkdir(parents=True)
    (tmp_path / "src/ais/__init__.py").write_text("COPY = True\n")
    found = subprocess.run([sys.executable, "-c", "import ais; print(ais.__file__, getattr(ais, 'COPY', False))"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert found == [str(tmp_path / "src/ais/__init__.py"), "True"]
