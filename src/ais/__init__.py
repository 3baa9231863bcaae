"""ais: adaptive layer skipping for small instruction-tuned LLMs.

When a stage script (`python stages/NAME.py`) stops on one of this package's errors (a bad
param, a missing or corrupt artifact, a bad prompt), it prints the message alone, without a
traceback: the message says what was wrong and how to fix it. Set AIS_TRACEBACK=1 for the
full traceback. Other exceptions, and interactive sessions, are untouched. With AIS_TRACE set,
the process records what it reads and writes (`ais.trace`).
"""
import os
import sys

from ais import trace


def _clear_errors(exc_type, exc, tb, _previous=sys.excepthook):
    if (os.environ.get("AIS_TRACEBACK") != "1" and exc_type.__module__.startswith("ais.")
            and issubclass(exc_type, (ValueError, FileNotFoundError))):
        print(f"error: {exc}", file=sys.stderr)
        return
    _previous(exc_type, exc, tb)


if sys.excepthook is sys.__excepthook__:
    sys.excepthook = _clear_errors

trace.install()
