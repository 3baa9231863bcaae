"""Reading params.yaml: every key's type and range in one table (SCHEMA), clear errors for
missing keys, wrong types and unknown (misspelt) keys, and one check of the whole file that the
pipeline's first stage runs before any other stage can remove its outputs."""
from __future__ import annotations

from pathlib import Path

import yaml

from ais import trace

# `git checkout -- params.yaml` is not enough: DVC rewrites the file and git's index in the same second with the
# same size, so git believes the file unchanged and checks nothing out (git 2.39, DVC 3).
RESTORE_HINT = ("params.yaml still holds the rejected value (`dvc exp run -S` writes it there before any stage "
                "runs, and `git status` may not show it); put the file back with "
                "`git show HEAD:params.yaml > params.yaml`")


class ParamsError(ValueError):
    """A params.yaml value that is missing or of the wrong type or range."""


def _spec(kind=None, lo=None, hi=None, choices=None, lo_open=False, hi_open=False, items=None, valid=None,
          expect=None) -> dict:
    return {"kind": kind, "lo": lo, "hi": hi, "choices": choices, "lo_open": lo_open, "hi_open": hi_open,
            "items": items, "valid": valid, "expect": expect}


INT0, INT1, FRACTION = _spec(int, lo=0), _spec(int, lo=1), _spec(float, lo=0, hi=1, hi_open=True)
SEED = _spec(int)
TEXT = _spec(str)
BENCHMARKS = ("mmlu", "arc_easy", "arc_challenge", "hellaswag", "piqa")  # evaluation/multiple_choice.py reads them
DRAFT_CHOICES = ("routed_skip", "clasp", "prompt_lookup", "suffix")  # evaluation/lossless.py's CHOICES

# Keys that name methods: their type is checked here, their names against the registry by
# `ais.methods.check_names` (the check_params stage runs both; the registry imports every method).
METHOD, PLAN = _spec(str), _spec(str)
METHOD_KEYS = {"skip.plan": True, "validate.methods": False, "frontier.methods": False, "multiple_choice.methods": False}

SCHEMA: dict[str, dict] = {
    "model.source": TEXT,
    "model.dtype": _spec(str, choices=("auto", "float32", "bfloat16", "float16", "float64")),
    "model.device": _spec(str, valid=lambda v: v in ("auto", "cpu", "cuda", "mps", "map") or v.startswith("cuda:"),
                          expect="auto, cpu, cuda, cuda:N, mps or map (accelerate's device_map over every device)"),
    "corpus.source": _spec(str, choices=("bigbench", "dolly", "jsonl")),
    "corpus.path": TEXT,
    "corpus.archive": TEXT,
    "corpus.categories": TEXT,
    "corpus.n": INT1,
    "corpus.n_importance": INT1,
    "corpus.n_heldout": INT1,
    "corpus.n_heldout_task": INT0,
    "corpus.max_chars": _spec(int, lo=20),
    "corpus.seed": SEED,
    "router.pivot_layer": _spec((str, int), valid=lambda v: v == "auto" or (isinstance(v, int) and v >= 1),
                                expect="'auto' or an integer >= 1"),
    "router.pooling": _spec(str, choices=("last", "mean")),
    "router.batch_size": INT1,
    "router.kind": _spec(str, choices=("knn", "learned")),
    "router.k": INT1,
    "router.sweep_per_category": INT1,
    "embed.shards": _spec(list, items=INT0, valid=lambda v: v == list(range(len(v))),
                          expect="the list [0, 1, ..., n-1] of n shard numbers"),
    "map.prompt_scores": _spec(bool),
    "map.homogeneity_k": INT1,
    "map.learned_c": _spec(float, lo=0, lo_open=True),
    "umap.n_neighbors": _spec(int, lo=2),
    "umap.min_dist": _spec(float, lo=0),
    "umap.seed": SEED,
    "importance.method": _spec(str, choices=("single", "group", "block_influence", "greedy")),
    "importance.greedy_layers": INT1,
    "importance.n_groups": INT1,
    "importance.n_continuation": INT0,
    "skip.mode": _spec(str, choices=("hard", "soft")),
    "skip.plan": PLAN,
    "skip.alpha": _spec(float, lo=0, hi=1, lo_open=True, hi_open=True),
    "skip.select": _spec(str, choices=("fraction", "threshold")),
    "skip.fraction": FRACTION,
    "skip.threshold": _spec(float, lo=0, hi=1),
    "skip.critical": _spec(float, lo=0, hi=1, lo_open=True),
    "validate.n_per_category": INT1,
    "validate.n_continuation": INT0,
    "validate.seed": SEED,
    "validate.methods": _spec(list, items=METHOD),
    "throughput.batch_sizes": _spec(list, items=INT1),
    "throughput.generate_batch_sizes": _spec(list, items=INT1),
    "throughput.new_tokens": INT1,
    "throughput.warmup": INT0,
    "throughput.repeats": INT1,
    "throughput.generate_repeats": INT1,
    "throughput.target_iqr": _spec(float, lo=0, lo_open=True),
    "multiple_choice.benchmarks": _spec(list, items=_spec(str, choices=BENCHMARKS)),
    "multiple_choice.n_per_benchmark": INT1,
    "multiple_choice.seed": SEED,
    "multiple_choice.batch_size": INT1,
    "multiple_choice.methods": _spec(list, items=METHOD),
    "frontier.fractions": _spec(list, items=FRACTION),
    "frontier.n_per_category": INT1,
    "frontier.timing_prompts": INT1,
    "frontier.batch_sizes": _spec(list, items=INT1),
    "frontier.new_tokens": INT1,
    "frontier.warmup": INT0,
    "frontier.oracle_fractions": _spec(list, items=FRACTION),
    "frontier.oracle_per_category": INT0,
    "frontier.repeats": INT1,
    "frontier.target_iqr": _spec(float, lo=0, lo_open=True),
    "frontier.methods": _spec(list, items=METHOD),
    "plan_map.n_per_category": INT1,
    "plan_map.k": INT1,
    "plan_map.fractions": _spec(list, items=FRACTION),
    "plan_map.seed": SEED,
    "datastore.n_per_category": INT0,
    "datastore.max_new_tokens": INT1,
    "datastore.batch_size": INT1,
    "datastore.seed": SEED,
    "depth.n_per_operation": INT1,
    "depth.paragraphs": TEXT,
    "depth.n_per_category": INT1,
    "depth.max_new_tokens": INT1,
    "depth.seed": SEED,
    "dynamic.min_layer": _spec((str, int), valid=lambda v: v == "auto" or (isinstance(v, int) and v >= 1),
                               expect="'auto' or an integer >= 1"),
    "lossless.dtype": _spec(str, choices=("auto", "float32", "float64", "bfloat16", "float16")),
    "lossless.clasp_interval": INT1,
    "lossless.gamma": INT1,
    "lossless.draft_fraction": FRACTION,
    "lossless.confidence": _spec(float, lo=0, hi=1),
    "lossless.max_new_tokens": INT1,
    "lossless.ngram": INT1,
    "lossless.n_per_category": INT1,
    "lossless.min_speedup": _spec(float, lo=0),
    "lossless.drafters": _spec(list, items=_spec(str, choices=DRAFT_CHOICES)),
    "lossless.strict": _spec(bool),
    "lossless.ablations": _spec(bool),
    "lossless.suffix_factor": _spec(float, lo=0, lo_open=True),
    "lossless.suffix_probability": _spec(float, lo=0, hi=1),
    "lossless.suffix_neighbours": INT0,
    "lossless.lookup_sweep": _spec(list, items=INT1),
}


# Keys whose use depends on another key's value, and the effective key that stands for them in
# data/params.effective.yaml (written by the check_params stage): a stage that uses `skip.alpha` only
# for soft plans, or `skip.fraction` / `skip.threshold` only under their `skip.select`, declares the
# effective key, so that changing a value it does not use reruns nothing (tests/test_pipeline.py
# checks that each stage reads exactly what it declares, through these).
EFFECTIVE_FILE = "data/params.effective.yaml"
EFFECTIVE = {"skip.blend": ("skip.alpha",), "skip.budget": ("skip.select", "skip.fraction", "skip.threshold")}


def effective(params: dict) -> dict:
    """The effective values of the conditional keys: the blend weight where `skip.mode` is soft (else
    None), and the budget rule `skip.select` names with its value."""
    select = get(params, "skip.select")
    return {"skip": {"blend": get(params, "skip.alpha") if get(params, "skip.mode") == "soft" else None,
                     "budget": {"select": select, select: get(params, f"skip.{select}")}}}


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


def _check(dotted: str, value, kind=None, lo=None, hi=None, choices=None, lo_open=False, hi_open=False, items=None,
           valid=None, expect=None):
    if kind is not None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise ParamsError(f"`{dotted}` is {value!r} ({type(value).__name__}); it must be {names}")
    if valid is not None and not valid(value):
        raise ParamsError(f"`{dotted}` is {value!r}; it must be {expect}")
    if choices is not None and value not in choices:
        raise ParamsError(f"`{dotted}` is {value!r}; it must be one of {', '.join(map(str, choices))}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ParamsError(f"`{dotted}` is {value!r}; it must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ParamsError(f"`{dotted}` is {value!r}; it must be {'<' if hi_open else '<='} {hi}")
    if items is not None:
        if not value:
            raise ParamsError(f"`{dotted}` is an empty list; give at least one value")
        for i, item in enumerate(value):
            _check(f"{dotted}[{i}]", item, **items)


def get(params: dict, dotted: str, kind=None, **limits):
    """The value at `dotted` (e.g. 'skip.alpha'), checked against SCHEMA; `kind` and `limits`
    (lo, hi, choices, lo_open, hi_open) add to or replace its entry, e.g. hi=len(map) for router.k."""
    trace.param(dotted)
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"params.yaml has no `{dotted}`")
        node = node[part]
    spec = dict(SCHEMA.get(dotted, {}))
    spec.update({"kind": kind} if kind is not None else {})
    spec.update(limits)
    _check(dotted, node, **spec)
    return node


def _leaves(node: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        out += _leaves(value, dotted + ".") if isinstance(value, dict) else [dotted]
    return out


def check_params(params: dict) -> None:
    """Check every key of the file at once: one ParamsError listing every problem (missing, wrong
    type or range, unknown) and how to restore params.yaml; nothing is returned when all is well."""
    problems = []
    for dotted in SCHEMA:
        try:
            get(params, dotted)
        except ParamsError as err:
            problems.append(str(err))
    for dotted in _leaves(params):
        if dotted not in SCHEMA:
            section = dotted.split(".")[0]
            known = sorted(k.split(".", 1)[1] for k in SCHEMA if k.startswith(section + "."))
            hint = f"known keys of `{section}`: {', '.join(known)}" if known else f"no section `{section}` is read"
            problems.append(f"`{dotted}` is not a parameter any stage reads ({hint})")
    if problems:
        raise ParamsError("; ".join(problems) + f". {RESTORE_HINT}")
