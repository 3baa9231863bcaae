"""What a stage really reads and writes, for the test that dvc.yaml declares it: with `AIS_TRACE`
set to a folder, a process records every params key it reads (`ais.params.get`) and every file it
opens inside the working directory (Python's audit hook), and writes them at exit to
`<AIS_TRACE>/<script>-<pid>.json`. Off (and free) otherwise."""
from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

PARAMS: set[str] = set()
OVERRIDDEN: set[str] = set()  # keys a caller set itself (ais.api.load's overrides): not read from params.yaml
READ: set[str] = set()
WRITTEN: set[str] = set()
_ROOT = Path.cwd().resolve()
_IGNORED = (".venv", ".git", ".dvc", "src", "stages", "tests")


def enabled() -> bool:
    return bool(os.environ.get("AIS_TRACE"))


def param(dotted: str) -> None:
    if enabled() and dotted not in OVERRIDDEN:
        PARAMS.add(dotted)


def overridden(keys) -> None:
    OVERRIDDEN.update(keys)


def _opened(event: str, args) -> None:
    if event != "open" or not args or not isinstance(args[0], (str, os.PathLike)):
        return
    path, mode = args[0], args[1] if len(args) > 1 else "r"
    try:
        relative = Path(os.path.abspath(path)).relative_to(_ROOT)
    except ValueError:
        return
    if not relative.parts or relative.parts[0] in _IGNORED or "__pycache__" in relative.parts:
        return
    writing = isinstance(mode, str) and any(c in mode for c in "wax+")
    if isinstance(args[2] if len(args) > 2 else None, int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        writing = True
    (WRITTEN if writing else READ).add(str(relative))


def _write() -> None:
    folder = Path(os.environ["AIS_TRACE"])
    folder.mkdir(parents=True, exist_ok=True)
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "python"
    record = {"argv": sys.argv, "params": sorted(PARAMS), "read": sorted(READ), "written": sorted(WRITTEN)}
    (folder / f"{script}-{os.getpid()}.json").write_text(json.dumps(record, indent=1))


def install() -> None:
    if enabled():
        sys.addaudithook(_opened)
        atexit.register(_write)
