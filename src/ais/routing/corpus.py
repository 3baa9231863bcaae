"""The labelled prompt corpus: BIG-bench tasks mapped to request categories, sampled into
disjoint splits (map, importance, held-out, held-out-by-task)."""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ais.files import cache_dir, sha256_file, write_text

BIGBENCH = "bigbench==1.0.0"
BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"  # of the PyPI sdist
TASKS_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"
SPLITS = ("map", "importance", "heldout", "heldout_task")


class CorpusError(ValueError):
    """A corpus setting or source that cannot be used."""


@dataclass(frozen=True)
class TaskSpec:
    category: str
    task: str
    template: str
    heldout: bool = False


def load_categories(path: Path | str) -> list[TaskSpec]:
    """Read the category -> tasks mapping (data/categories.yaml), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"category mapping {path} not found")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not raw:
        raise CorpusError(f"{path} must map each category name to a list of tasks")
    specs = []
    for category, tasks in raw.items():
        if not isinstance(tasks, list) or not tasks:
            raise CorpusError(f"{path}: category {category!r} needs a non-empty list of tasks")
        for entry in tasks:
            if not isinstance(entry, dict) or "task" not in entry:
                raise CorpusError(f"{path}: each entry of {category!r} needs a `task`, got {entry!r}")
            template = entry.get("template", "{input}")
            if "{input}" not in template:
                raise CorpusError(f"{path}: template of {entry['task']!r} has no {{input}} placeholder")
            specs.append(TaskSpec(category, entry["task"], template, bool(entry.get("heldout", False))))
        if all(s.heldout for s in specs if s.category == category):
            raise CorpusError(f"{path}: category {category!r} has no task left for the map (all are heldout)")
    return specs


def fetch_bigbench() -> Path:
    """The BIG-bench sdist from PyPI (358 MB, fetched once into the cache; never installed)."""
    target = cache_dir() / BIGBENCH_SDIST
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"corpus: downloading {BIGBENCH} (358 MB, once) into {target.parent}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
             "--disable-pip-version-check", "-d", str(target.parent), BIGBENCH],
            check=True,
        )
    digest = sha256_file(target)
    if digest != BIGBENCH_SHA256:
        raise CorpusError(f"{target} has sha256 {digest}, expected {BIGBENCH_SHA256} for {BIGBENCH}; "
                          "delete it and rerun to download it again")
    return target


def read_tasks(archive: Path, tasks: set[str]) -> dict[str, list[dict]]:
    """The `examples` of each named task, read straight out of the BIG-bench tarball."""
    wanted = {f"{TASKS_PREFIX}{t}/task.json": t for t in tasks}
    found: dict[str, list[dict]] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                task = wanted.get(member.name)
                if task is None:
                    continue
                data = json.load(tar.extractfile(member))
                found[task] = data.get("examples", [])
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CorpusError(f"{archive} is not a readable BIG-bench archive ({err}); delete it and rerun") from err
    missing = sorted(tasks - set(found))
    if missing:
        raise CorpusError(f"tasks not found in {archive}: {', '.join(missing)} (check data/categories.yaml)")
    return found


def render(template: str, text: str, max_chars: int) -> str:
    """The request text: the template kept whole, the task input cut to fit `max_chars`."""
    room = max_chars - (len(template) - len("{input}"))
    if room < 1:
        raise CorpusError(f"corpus.max_chars={max_chars} leaves no room for input in template {template!r}")
    return template.replace("{input}", text.strip()[:room].rstrip())


def _balanced_order(rows: list[dict], rng: random.Random) -> list[dict]:
    """Interleave tasks: every task's first row, then every task's second row, ... (random within
    a round), so any prefix draws evenly across the category's tasks."""
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    ranked = []
    for task in sorted(by_task):
        items = by_task[task]
        rng.shuffle(items)
        ranked += [(i, rng.random(), row) for i, row in enumerate(items)]
    ranked.sort(key=lambda t: (t[0], t[1]))
    return [row for _, _, row in ranked]


def _split_counts(n_map: int, categories: list[str]) -> dict[str, int]:
    """corpus.n spread as evenly as possible over the categories (stratified)."""
    base, extra = divmod(n_map, len(categories))
    return {c: base + (1 if i < extra else 0) for i, c in enumerate(categories)}


def build_corpus(specs: list[TaskSpec], examples: dict[str, list[dict]], n: int, n_importance: int,
                 n_heldout: int, n_heldout_task: int, max_chars: int, seed: int) -> list[dict]:
    """Rows {prompt, category, task, split}: a stratified sample with disjoint splits.
    No prompt text occurs twice; held-out-by-task rows come only from tasks marked heldout."""
    rng = random.Random(seed)
    categories = sorted({s.category for s in specs})
    per_category_map = _split_counts(n, categories)
    seen: set[str] = set()
    rows_out: list[dict] = []
    for category in categories:
        pools = {False: [], True: []}
        for spec in (s for s in specs if s.category == category):
            for ex in examples[spec.task]:
                text = ex.get("input")
                if not isinstance(text, str) or not text.strip():
                    continue
                prompt = render(spec.template, text, max_chars)
                digest = hashlib.sha1(prompt.encode()).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                pools[spec.heldout].append({"prompt": prompt, "category": category, "task": spec.task})
        ordered = _balanced_order(pools[False], rng)
        need = n_heldout + n_importance + per_category_map[category]
        if len(ordered) < need:
            raise CorpusError(
                f"category {category!r} has {len(ordered)} distinct prompts but the splits need {need} "
                f"(corpus.n={n} over {len(categories)} categories + n_importance + n_heldout); lower corpus.n"
            )
        held_task = _balanced_order(pools[True], rng)
        if len(held_task) < n_heldout_task:
            raise CorpusError(f"category {category!r} has {len(held_task)} held-out-task prompts, "
                              f"fewer than corpus.n_heldout_task={n_heldout_task}")
        cuts = {"heldout": ordered[:n_heldout], "importance": ordered[n_heldout:n_heldout + n_importance],
                "map": ordered[n_heldout + n_importance:need], "heldout_task": held_task[:n_heldout_task]}
        for split, rows in cuts.items():
            rows_out += [{**row, "split": split} for row in rows]
    order = {s: i for i, s in enumerate(SPLITS)}
    rows_out.sort(key=lambda r: (order[r["split"]], r["category"], r["task"], r["prompt"]))
    return rows_out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))


def read_corpus(path: Path | str, split: str | None = None) -> list[dict]:
    """Rows of corpus.jsonl, optionally one split, with a clear error if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path} not found: run `dvc repro corpus` first")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(f"{path}:{lineno} is not valid JSON ({err}); rerun `dvc repro -f corpus`") from err
            if split is None or row["split"] == split:
                rows.append(row)
    return rows


def prompts_by_category(rows: list[dict], split: str, n: int | None = None) -> dict[str, list[str]]:
    """{category: prompts} of one split, the first `n` of each category (all if None), in file order."""
    out: dict[str, list[str]] = {}
    for row in rows:
        if row["split"] == split and (n is None or len(out.get(row["category"], [])) < n):
            out.setdefault(row["category"], []).append(row["prompt"])
    return out


def sample_per_category(categories: list[str], n_per_category: int, seed: int) -> list[int]:
    """Indices of `n_per_category` rows of each category (all where fewer), drawn with `seed`, in
    order: which map entries the plan map searches and the datastore keeps replies of."""
    rng = np.random.default_rng(seed)
    chosen = []
    for category in sorted(set(categories)):
        members = [i for i, c in enumerate(categories) if c == category]
        chosen += rng.choice(members, size=min(n_per_category, len(members)), replace=False).tolist()
    return sorted(int(i) for i in chosen)


def mixed_prompts(prompts_by_category: dict[str, list[str]], size: int) -> tuple[list[str], list[str]]:
    """`size` prompts taken one category at a time, as mixed traffic would arrive: (prompts, categories)."""
    categories = sorted(prompts_by_category)
    prompts, truth = [], []
    depth = 0
    while len(prompts) < size and any(depth < len(prompts_by_category[c]) for c in categories):
        for c in categories:
            if depth < len(prompts_by_category[c]) and len(prompts) < size:
                prompts.append(prompts_by_category[c][depth])
                truth.append(c)
        depth += 1
    return prompts, truth


def corpus_summary(rows: list[dict]) -> dict:
    """Counts per split and category, for reports/corpus.json."""
    out = {"n_total": len(rows), "splits": {}}
    for row in rows:
        split = out["splits"].setdefault(row["split"], {"n": 0, "categories": {}, "tasks": set()})
        split["n"] += 1
        split["categories"][row["category"]] = split["categories"].get(row["category"], 0) + 1
        split["tasks"].add(row["task"])
    for split in out["splits"].values():
        split["n_tasks"] = len(split.pop("tasks"))
    return out


def dolly_examples(max_per_category: int | None = None) -> tuple[list[TaskSpec], dict[str, list[dict]]]:
    """databricks-dolly-15k (the original prototype's corpus) through `datasets`; needs hub access.
    Its categories become ours; each category is one 'task', so there is no held-out-by-task split."""
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise CorpusError("corpus.source=dolly needs the `datasets` package (pip install datasets) "
                          "and hub access; the default corpus.source=bigbench needs neither") from err
    data = load_dataset("databricks/databricks-dolly-15k", split="train")
    examples: dict[str, list[dict]] = {}
    for row in data:
        examples.setdefault(f"dolly/{row['category']}", []).append({"input": row["instruction"]})
    specs = [TaskSpec(task.split("/", 1)[1], task, "{input}") for task in sorted(examples)]
    return specs, examples


UNLABELLED = "unlabelled"  # the one category of a requests file without labels


def request_examples(path: Path | str, min_per_category: int = 1) -> tuple[list[TaskSpec], dict[str, list[dict]]]:
    """A user's own requests (`corpus.source: jsonl`): one JSON object a line, with `prompt` and, where
    the user has labels, `category` (all lines or none; without labels every request is in one category,
    `unlabelled`: the plan map needs no labels). Each category becomes one task, so there is no
    held-out-by-task split. A bad file gives one error naming the line: not JSON, not an object, no
    `prompt`, an empty prompt, a category that is not text, labels on some lines only, a duplicate
    prompt; or the category with fewer than `min_per_category` requests."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus.path={str(path)!r} not found: give a JSONL file of requests")
    examples: dict[str, list[dict]] = {}
    first_line: dict[str, int] = {}
    labelled = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{where} is not JSON ({err})") from err
        if not isinstance(row, dict):
            raise CorpusError(f"{where} is a {type(row).__name__}, not an object with a `prompt`")
        if "prompt" not in row:
            raise CorpusError(f"{where} has no `prompt`")
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise CorpusError(f"{where}: `prompt` is {prompt!r}; give some text")
        has_label = "category" in row
        if labelled is None:
            labelled = has_label
        elif has_label != labelled:
            raise CorpusError(f"{where} {'has' if has_label else 'has no'} `category`, unlike the lines before it: "
                              "label every request or none")
        category = row.get("category", UNLABELLED)
        if not isinstance(category, str) or not category.strip():
            raise CorpusError(f"{where}: `category` is {category!r}; give a name")
        if prompt in first_line:
            raise CorpusError(f"{where} repeats the prompt of line {first_line[prompt]}")
        first_line[prompt] = number
        examples.setdefault(f"jsonl/{category}", []).append({"input": prompt})
    if not examples:
        raise CorpusError(f"{path} holds no request")
    for task, rows in examples.items():
        if len(rows) < min_per_category:
            raise CorpusError(f"{path}: category {task.split('/', 1)[1]!r} has {len(rows)} requests, fewer than the "
                              f"{min_per_category} its splits need (corpus.n_importance + corpus.n_heldout + its share "
                              "of corpus.n); add requests or lower those")
    specs = [TaskSpec(task.split("/", 1)[1], task, "{input}") for task in sorted(examples)]
    return specs, examples
