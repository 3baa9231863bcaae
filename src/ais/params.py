"""Reading params.yaml with clear errors for missing keys and wrong types."""
from __future__ import annotations

from pathlib import Path

import yaml


class ParamsError(ValueError):
    """A params.yaml value that is missing or of the wrong type or range."""


def load_params(path: Path | str = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run from the repository root")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def get(params: dict, dotted: str, kind=None, lo=None, hi=None, choices=None, lo_open=False, hi_open=False):
    """The value at `dotted` (e.g. 'skip.alpha'), checked for type, range and choices."""
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"params.yaml has no `{dotted}`")
        node = node[part]
    value = node
    if kind is not None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise ParamsError(f"`{dotted}` is {value!r} ({type(value).__name__}); it must be {names}")
    if choices is not None and value not in choices:
        raise ParamsError(f"`{dotted}` is {value!r}; it must be one of {', '.join(map(str, choices))}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ParamsError(f"`{dotted}` is {value!r}; it must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ParamsError(f"`{dotted}` is {value!r}; it must be {'<' if hi_open else '<='} {hi}")
    return value
