"""The package layout holds: dvc.yaml lists exactly the code each stage runs, lower layers never
import upper ones, and no two modules differ only by a suffix."""
from pathlib import Path

import pytest
import yaml

from layout import REPO, SRC, closure, imported_modules

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# lower to upper: a module may import its own layer and those listed before it
LAYERS = ["ais.trace", "ais", "ais.params", "ais.files", "ais.device", "ais.model", "ais.routing", "ais.methods",
          "ais.decoding", "ais.evaluation", "ais.report", "ais.api", "ais.cli"]


def is_code(path: Path) -> bool:
    """A subpackage's __init__.py that holds only a docstring changes nothing when it changes."""
    if path.name != "__init__.py" or path.parent == SRC / "ais":
        return True
    import ast

    body = ast.parse(path.read_text()).body
    return not all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_exactly_the_code_it_imports(stage):
    spec = STAGES[stage]
    script = spec["cmd"].split()[1]
    deps = [REPO / d for d in spec["deps"]]
    assert REPO / script in deps, f"stage {stage}: its script {script} is not among its deps"
    used = {p for p in closure(REPO / script) if is_code(p)}
    uncovered = sorted(str(p.relative_to(REPO)) for p in used if not any(p == d or d in p.parents for d in deps))
    assert not uncovered, f"stage {stage} imports {uncovered}, which its deps in dvc.yaml do not list"
    listed_code = [d for d in deps if SRC in d.parents]
    unused = [str(d.relative_to(REPO)) for d in listed_code if not any(p == d or d in p.parents for p in used)]
    assert not unused, f"stage {stage} lists {unused} in dvc.yaml but never imports them"


def test_every_stage_waits_for_the_params_check():
    for name, spec in STAGES.items():
        if name != "check_params":
            assert "data/params.checked" in spec["deps"], name


def layer_of(module: str) -> int:
    parts = module.split(".")
    for depth in (2, 1):
        name = ".".join(parts[:depth])
        if name in LAYERS:
            return LAYERS.index(name)
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS")


def test_lower_layers_never_import_upper_ones():
    wrong = []
    for path in sorted((SRC / "ais").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for name in imported_modules(path):
            if layer_of(name) > layer_of(module):
                wrong.append(f"{module} imports {name}")
    assert not wrong, wrong


def test_no_two_modules_differ_only_by_a_suffix():
    names = sorted({p.stem for p in (SRC / "ais").rglob("*.py") if p.stem != "__init__"})
    clashes = [(a, b) for a in names for b in names if a != b and b.startswith(a) and len(b) - len(a) <= 3]
    assert not clashes, clashes
