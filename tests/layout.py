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
    __init__.py files that importing them runs."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        for name in imported_modules(current):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                file = module_file(".".join(parts[:depth]))
                if file is not None and file not in seen:
                    seen.add(file)
                    todo.append(file)
    return seen
