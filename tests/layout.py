"""What each stage imports from src/ais, found by reading the code (no import is executed)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    """The file of an `ais...` module (a package's __init__.py), or None if it is not ours."""
    if name != "ais" and not name.startswith("ais."):
        return None
    base = SRC / Path(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imported_modules(path: Path) -> set[str]:
    """Every `ais...` module a file imports, at any depth in the file (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from ais.x import module`
    return {n for n in names if module_file(n) is not None}


def closure(path: Path) -> set[Path]:
    """The files of every `ais` module `path` imports, directly or not, with the packages'
    __init__.py files that importing them runs. Importing the method registry (`ais.methods`) imports
    every module of its folder (`ais.methods.discover`)."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        names = imported_modules(current)
        if any(n == "ais.methods" or n.startswith("ais.methods.") for n in names):
            names |= {f"ais.methods.{p.stem}" for p in (SRC / "ais" / "methods").glob("*.py") if p.stem != "__init__"}
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                file = module_file(".".join(parts[:depth]))
                if file is not None and file not in seen:
                    seen.add(file)
                    todo.append(file)
    return seen


def traced_stages(trace_dir: Path) -> dict[str, dict]:
    """{script stem: {params, read, written}} merged over every traced process of a run (AIS_TRACE)."""
    import json

    out: dict[str, dict] = {}
    for path in sorted(Path(trace_dir).glob("*.json")):
        record = json.loads(path.read_text())
        script = Path(record["argv"][0]).stem if record["argv"] else path.stem
        merged = out.setdefault(script, {"params": set(), "read": set(), "written": set()})
        for key in ("params", "read", "written"):
            merged[key] |= set(record[key])
    return out


def declared(spec: dict) -> tuple[set[str], list[str], list[str]]:
    """(params keys, deps, outs) a dvc.yaml stage declares (outs: outs, metrics and plots)."""
    keys = set()
    for entry in spec.get("params", []):
        if isinstance(entry, str):
            keys.add(entry)
        else:
            for file, listed in entry.items():
                keys |= {"*"} if not listed else set(listed)
    outs = []
    for section in ("outs", "metrics", "plots"):
        for entry in spec.get(section, []):
            outs.append(entry if isinstance(entry, str) else next(iter(entry)))
    return keys, [str(d) for d in spec.get("deps", [])], outs


def covered(path: str, roots: list[str]) -> bool:
    """Whether `path` is one of `roots`, inside one, or a temporary sibling of one (`.<name>.*`, what the
    atomic writers of ais.files use)."""
    parts = Path(path).parts
    for root in roots:
        root = root.rstrip("/")
        if path == root or path.startswith(root + "/"):
            return True
        for depth in range(1, len(parts) + 1):
            prefix = Path(*parts[:depth])
            if prefix.parent == Path(root).parent and prefix.name.startswith(f".{Path(root).name}."):
                return True
    return False
