"""Multiple-choice benchmarks under skipping, scored by lm-evaluation-harness with its own task
definitions (prompts, metrics, HellaSwag's preprocessing), zero-shot and offline.

Data: one JSONL file per benchmark (`benchmarks.write_benchmarks`). At run time a local task YAML per benchmark `include`s the harness's own YAML and replaces only the data source
and split (`write_task_configs`). The model is the harness's HFLM with two changes (`SkipLM`): each
request is scored under the skip plan its context is given by a plan chooser, and the options of a
question are scored in one packed sequence (the context once, each option attending to it and to
itself): the same log-likelihoods as HFLM's (tested), about half the compute."""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Offline: the task data are local JSONL files; nothing may reach the Hugging Face hub. Set before
# `datasets` is imported (it reads them once, at import).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ais.evaluation.benchmarks import BENCHMARKS, BenchmarkError, check_data, check_names  # noqa: E402
from ais.evaluation.statistics import mean_interval, mean_of_means_interval  # noqa: E402
from ais.model.gating import NO_SKIP, SkipPlan, group_by_plan, skipping  # noqa: E402
from ais.routing.plans import OTHER_MODE, make_plan, random_layers  # noqa: E402

PlanChooser = Callable[[list[str]], list[SkipPlan]]  # contexts -> one plan per context

HARNESS_TASKS = Path(lm_eval.__file__).parent / "tasks"
# The per-subject description of the harness's mmlu_<subject>_continuation tasks (all 57 are this
# sentence with the subject's underscores as spaces), as a template so that it holds per row in a
# file that mixes subjects.
MMLU_DESCRIPTION = "The following are questions (with answers) about {{ subject | replace('_', ' ') }}.\n\n"

# SmolLM2-135M-Instruct's model card, zero-shot (the original bfloat16 weights; ours are its Q4_1
# GGUF), in percent. The card used lighteval, not this harness: huggingface/smollm
# text/evaluation/tasks.py scores arc:easy, arc:challenge (test split), hellaswag, piqa and mmlu_cf
# with Metrics.loglikelihood_acc_norm_nospace, i.e. the option's log-likelihood divided by its
# length in characters (the leading space not counted), which is the harness's `acc_norm`. Its
# prompts differ slightly: HellaSwag's context keeps a trailing space; MMLU cloze reads "The
# following are questions about {subject}.\nQuestion: ...", the harness "The following are
# questions (with answers) about {subject}.\n\nQuestion: ...". "ARC average" is the mean of
# ARC-Easy and ARC-Challenge.
PUBLISHED = {"hellaswag": 40.9, "arc_average": 37.3, "piqa": 66.3, "mmlu": 29.3}
PUBLISHED_METRIC = "acc_norm"
METRICS = ("acc", "acc_norm")
ARC_NOTE = "validation split (the harness and the model card score ARC on its test split, not shipped here)"


# ---------------------------------------------------------------- tasks: local YAMLs over the harness's own

def local_task(harness_yaml: str, task: str, data_file: Path | str, split: str) -> dict:
    """A task config that `include`s the harness's own definition (`harness_yaml`, relative to
    lm_eval/tasks) and reads its `split` from the local JSONL `data_file` instead of the hub."""
    return {
        "include": str(HARNESS_TASKS / harness_yaml),
        "task": task,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(Path(data_file).resolve())}},
        "training_split": None,
        "validation_split": split if split == "validation" else None,
        "test_split": split if split == "test" else None,
        "fewshot_split": None,
    }


def task_config(name: str, data_file: Path | str) -> dict:
    """The harness's own task for the benchmark `name`, reading `data_file` instead of the hub."""
    bench = BENCHMARKS[name]
    config = local_task(bench.harness_yaml, bench.task, data_file, bench.split)
    if name == "mmlu":
        config["description"] = MMLU_DESCRIPTION
    return config


def write_task_configs(folder: Path | str, data_files: dict[str, Path | str]) -> dict[str, str]:
    """One YAML per benchmark in `folder` (machine-specific: it names the harness's install path),
    after checking every data file; returns {benchmark: task name}."""
    folder = Path(folder)
    for name, path in data_files.items():
        check_data(name, path)
    for name, path in data_files.items():
        (folder / f"ais_{name}.yaml").write_text(yaml.safe_dump(task_config(name, path), sort_keys=False))
    return {name: BENCHMARKS[name].task for name in data_files}


# ---------------------------------------------------------------- the model

def no_skip(contexts: list[str]) -> list[SkipPlan]:
    """The plan chooser of the full model."""
    return [NO_SKIP] * len(contexts)


@register_model("ais")
class SkipLM(HFLM):
    """The harness's HFLM on an already loaded model, each request scored under the plan that
    `choose_plans` gives its context. Every distinct context is given its plan once (one call per
    request batch); requests sharing a plan are scored together by HFLM, under `skipping`."""

    def __init__(self, model, tokenizer, choose_plans: PlanChooser = no_skip, batch_size: int = 16, **kwargs):
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **kwargs)
        self.choose_plans = choose_plans

    def plans_for(self, contexts: list[str]) -> dict[str, SkipPlan]:
        """{context: plan} for the distinct contexts."""
        distinct = list(dict.fromkeys(contexts))
        plans = list(self.choose_plans(distinct)) if distinct else []
        if len(plans) != len(distinct) or not all(isinstance(p, SkipPlan) for p in plans):
            raise BenchmarkError(f"the plan chooser must return one SkipPlan per context: got {len(plans)} "
                                 f"values for {len(distinct)} contexts")
        return dict(zip(distinct, plans))

    def _by_plan(self, requests, score, disable_tqdm: bool) -> list:
        """`score(sub-requests)` per plan group, under that plan; results in the original order."""
        plans = self.plans_for([req.args[0] for req in requests])
        results = [None] * len(requests)
        groups = group_by_plan(plans[req.args[0]] for req in requests)
        bar = tqdm(total=len(requests), desc="requests", unit="req", disable=disable_tqdm or len(groups) == 1,
                   leave=False)
        for plan, members in groups.items():
            with skipping(self.model, plan):
                scores = score([requests[i] for i in members], disable_tqdm=disable_tqdm or len(groups) > 1)
            for i, value in zip(members, scores):
                results[i] = value
            bar.update(len(members))
        bar.close()
        return results

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._by_plan(requests, super().loglikelihood, disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        """HFLM's token scoring, (log-likelihood, is greedy) per request, with every distinct context
        run once and its continuations packed after it; longest first, `batch_size` contexts a batch.
        Contexts whose pack exceeds the model's length go to HFLM's own (truncating) scoring."""
        by_context: dict[tuple, list[int]] = {}
        for i, (_, context, continuation) in enumerate(requests):
            by_context.setdefault(tuple(context), []).append(i)
        size = {c: len(c) + sum(len(requests[i][2]) for i in members) for c, members in by_context.items()}
        too_long = [i for c, members in by_context.items() if size[c] > self.max_length for i in members]
        contexts = sorted((c for c in by_context if size[c] <= self.max_length), key=lambda c: -size[c])
        results: list = [None] * len(requests)
        if too_long:
            for i, value in zip(too_long, super()._loglikelihood_tokens([requests[i] for i in too_long],
                                                                        disable_tqdm, override_bs)):
                results[i] = value
        batch = int(override_bs or self.batch_size)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in tqdm(range(0, len(contexts), batch), desc="scoring", unit="batch", leave=False,
                          disable=disable_tqdm):
            chunk = contexts[start:start + batch]
            owners = [i for c in chunk for i in by_context[c]]
            packed = pack_options([(list(c), [requests[i][2] for i in by_context[c]]) for c in chunk], pad,
                                  self.model.dtype)
            for i, value in zip(owners, score_packed(self.model, packed, self.device)):
                results[i] = value
                self.cache_hook.add_partial("loglikelihood", requests[i][0], value)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._by_plan(requests, super().loglikelihood_rolling, disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._by_plan(requests, super().generate_until, disable_tqdm)

    def get_model_info(self) -> dict:
        """What the harness records about the model, without asking the hub for a revision."""
        return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(self.model.dtype)}


@dataclass
class Packed:
    """Questions packed one per row: token ids, additive 4-D attention mask, positions, and per
    option (row, positions whose next-token prediction scores it, its tokens)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    options: list[tuple[int, list[int], list[int]]]


def pack_options(questions: list[tuple[list[int], list[list[int]]]], pad_id: int, dtype: torch.dtype) -> Packed:
    """One row per (context, continuations): the context, then each continuation at the positions
    it would have after the context alone, attending causally to the context and to itself only.
    Padding attends to itself (no empty softmax row)."""
    lengths = [len(ctx) + sum(len(c) for c in conts) for ctx, conts in questions]
    rows, width = len(questions), max(lengths)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(rows, 1, 1)
    options = []
    for row, (context, continuations) in enumerate(questions):
        n = len(context)
        ids[row, :n] = torch.tensor(context)
        positions[row, :n] = torch.arange(n)
        allowed[row, :n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
        offset = n
        for continuation in continuations:
            k = len(continuation)
            ids[row, offset:offset + k] = torch.tensor(continuation)
            positions[row, offset:offset + k] = torch.arange(n, n + k)
            allowed[row, offset:offset + k, :n] = True
            allowed[row, offset:offset + k, offset:offset + k] = torch.ones(k, k, dtype=torch.bool).tril()
            options.append((row, [n - 1] + list(range(offset, offset + k - 1)), continuation))
            offset += k
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return Packed(ids, mask.unsqueeze(1), positions, options)


@torch.no_grad()
def score_packed(model, packed: Packed, device) -> list[tuple[float, bool]]:
    """(sum of log-probabilities, every token the argmax) per option, as HFLM computes them
    (log-softmax in the model's dtype); only the scored positions go through the vocabulary head."""
    hidden = model.model(input_ids=packed.input_ids.to(device), attention_mask=packed.attention_mask.to(device),
                         position_ids=packed.position_ids.to(device), use_cache=False).last_hidden_state
    rows = torch.tensor([row for row, positions, _ in packed.options for _ in positions], device=device)
    columns = torch.tensor([p for _, positions, _ in packed.options for p in positions], device=device)
    logprobs = torch.log_softmax(model.lm_head(hidden[rows, columns]), dim=-1)
    out, start = [], 0
    for _, _, continuation in packed.options:
        part = logprobs[start:start + len(continuation)]
        start += len(continuation)
        target = torch.tensor(continuation, device=part.device)
        out.append((float(part[torch.arange(len(continuation), device=part.device), target].sum()),
                    bool((part.argmax(-1) == target).all())))
    return out


# ---------------------------------------------------------------- the skip conditions

class RouteCache:
    """The route of each distinct context (category, nearest map entries, and for the prompt plan its
    own layer scores), routed once (batched, chat-formatted as the map's prompts were) and shared by
    every condition that needs it."""

    def __init__(self, decoder, tokenizer):
        self.decoder, self.tokenizer = decoder, tokenizer
        self.route: dict[str, object] = {}
        self.category: dict[str, str] = {}

    def routes(self, contexts: list[str]) -> list:
        missing = [c for c in dict.fromkeys(contexts) if c not in self.route]
        if missing:
            routes = self.decoder.route_prompts(self.tokenizer, missing, mode=self.decoder.settings.mode)
            self.route.update(zip(missing, routes))
            self.category.update(zip(missing, (r.category for r in routes)))
        return [self.route[c] for c in contexts]

    def categories(self, contexts: list[str]) -> list[str]:
        return [r.category for r in self.routes(contexts)]


def skip_conditions(decoder, tokenizer, seed: int,
                    other_mode: bool = False) -> tuple[dict[str, PlanChooser], RouteCache]:
    """The plan choosers of the conditions validate also compares, all in `skip.mode`:
    full (no skip); routed (the context's plan of kind `skip.plan`: its routed category's by default,
    its nearest map entries' or its own layer scores); global (one plan for every context, from the
    pooled importance, as many layers as the routed plan); random (as many layers drawn at random
    from the range a routed plan may use, one draw per context, seeded); routed_<other mode> (the
    routed layers in the other mode) only with `other_mode`. Every plan skips the context too."""
    settings, routes = decoder.settings, RouteCache(decoder, tokenizer)
    mode, other, alpha = settings.mode, OTHER_MODE[settings.mode], settings.alpha
    n_layers = decoder.model.config.num_hidden_layers
    rng = np.random.default_rng(seed)
    drawn: dict[str, SkipPlan] = {}

    def routed(contexts, in_mode=mode):
        return [decoder.plan_of(r.category, r.neighbours, r.scores, mode=in_mode) for r in routes.routes(contexts)]

    def routed_other(contexts):
        return routed(contexts, other)

    def global_(contexts):
        return [make_plan(decoder.global_layers(len(p.layers)), mode, alpha) for p in routed(contexts)]

    def random_(contexts):
        for context, plan in zip(contexts, routed(contexts)):
            if context not in drawn:
                drawn[context] = make_plan(random_layers(n_layers, decoder.pivot, len(plan.layers), rng), mode, alpha)
        return [drawn[c] for c in contexts]

    conditions = {"full": no_skip, "routed": routed, "global": global_, "random": random_}
    if other_mode:
        conditions[f"routed_{other}"] = routed_other
    return conditions, routes


# ---------------------------------------------------------------- evaluation

def run_harness(lm: SkipLM, task_manager: TaskManager, tasks: list[str], seed: int = 0) -> dict:
    """The harness's own run: zero-shot, samples logged, seeds fixed, no harness bootstrap
    (the intervals are ours)."""
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, num_fewshot=0,
                                   log_samples=True, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
                                   torch_random_seed=seed, fewshot_random_seed=seed)


def question_rows(results: dict, benchmark: str, task: str, condition: str, routes: RouteCache | None) -> list[dict]:
    """One row per question from the harness's logged samples."""
    rows = []
    for sample in sorted(results["samples"][task], key=lambda s: s["doc_id"]):
        row = {"benchmark": benchmark, "doc_id": sample["doc_id"], "condition": condition,
               "n_options": len(sample["arguments"])}
        row.update({m: float(sample[m]) for m in METRICS if m in sample})
        if "subject" in sample["doc"]:
            row["subject"] = sample["doc"]["subject"]
        if routes is not None:
            context = sample["arguments"][0][0]
            row["routed_category"] = routes.category.get(context)
        rows.append(row)
    return rows


def evaluate(model, tokenizer, data_dir: Path | str, names: Sequence[str], conditions: dict[str, PlanChooser],
             routes: RouteCache | None = None, batch_size: int = 16, seed: int = 0,
             progress: bool = True) -> tuple[dict, list[dict]]:
    """(metrics, per-question rows): every benchmark in `names` (read from data_dir/<name>.jsonl)
    under every condition, by the harness. Conditions other than `full` are compared with `full`
    pairwise, question by question; `routed` also with `global`."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    names = check_names(names)
    data_files = {name: Path(data_dir) / f"{name}.jsonl" for name in names}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ais_tasks_") as folder:
        tasks = write_task_configs(folder, data_files)
        manager = TaskManager(include_path=folder, include_defaults=False)
        # One harness run per condition, all benchmarks together: the harness hands every request of
        # the run to one loglikelihood call, and each run costs ~1 s of its own bookkeeping.
        results = {}
        for condition, chooser in tqdm(conditions.items(), desc="multiple choice", unit="condition",
                                       disable=not progress):
            lm = SkipLM(model, tokenizer, chooser, batch_size=batch_size)
            results[condition] = run_harness(lm, manager, [tasks[name] for name in names], seed)
    for condition in conditions:  # after every run: a question's routed category is known once any condition routed it
        for name in names:
            rows += question_rows(results[condition], name, tasks[name], condition, routes)
    return summarise(rows, list(conditions), seed), rows


def _rounded(values: dict, digits: int = 4) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}


def _interval(values, seed: int, prefix: str) -> dict:
    """Mean and 95% interval as flat keys (prefix, prefix_ci_low, prefix_ci_high); n is kept once per benchmark."""
    interval = mean_interval(values, seed)
    return _rounded({k: v for k, v in interval.as_dict(prefix).items() if k != f"{prefix}_n"})


def _comparisons(conditions: list[str]) -> dict[str, tuple[str, str | None]]:
    """{key prefix: (condition, condition it is paired with or None)} for every number reported."""
    keys: dict[str, tuple[str, str | None]] = {c: (c, None) for c in conditions}
    keys.update({f"{c}_minus_full": (c, "full") for c in conditions if c != "full" and "full" in conditions})
    if "routed" in conditions and "global" in conditions:
        keys["routed_minus_global"] = ("routed", "global")
    return keys


def summarise(rows: list[dict], conditions: list[str], seed: int) -> dict:
    """Per benchmark: n, chance, each condition's acc and acc_norm with 95% intervals, each
    condition's paired difference from full, routed minus global; the ARC average (the mean of
    ARC-Easy's and ARC-Challenge's, each resampled on its own) and the model card's numbers beside."""
    out: dict[str, dict] = {}
    values: dict[tuple[str, str, str], np.ndarray] = {}  # (benchmark, key prefix, metric) -> per question
    for name in dict.fromkeys(r["benchmark"] for r in rows):
        by_condition = {c: sorted((r for r in rows if r["benchmark"] == name and r["condition"] == c),
                                  key=lambda r: r["doc_id"]) for c in conditions}
        full = by_condition.get("full") or next(iter(by_condition.values()))
        for condition, members in by_condition.items():
            if [r["doc_id"] for r in members] != [r["doc_id"] for r in full]:
                raise BenchmarkError(f"{name}: condition {condition} scored other questions than full")
        bench = BENCHMARKS[name]
        entry = {"n": len(full), "split": bench.split, "harness_split": bench.harness_split,
                 "chance": round(float(np.mean([1 / r["n_options"] for r in full])), 4)}
        if bench.split != bench.harness_split:
            entry["split_note"] = ARC_NOTE
        for prefix, (a, b) in _comparisons(conditions).items():
            for m in (m for m in METRICS if m in full[0]):
                scores = np.array([r[m] for r in by_condition[a]], dtype=np.float64)
                if b is not None:
                    scores = scores - np.array([r[m] for r in by_condition[b]], dtype=np.float64)
                values[name, prefix, m] = scores
                entry.update(_interval(scores, seed, f"{prefix}_{m}"))
        if name in PUBLISHED:
            entry[f"published_{PUBLISHED_METRIC}"] = round(PUBLISHED[name] / 100, 4)
        out[name] = entry
    if "arc_easy" in out and "arc_challenge" in out:
        average = {"n": out["arc_easy"]["n"] + out["arc_challenge"]["n"], "split": "validation", "split_note": ARC_NOTE,
                   "definition": "mean of arc_easy's and arc_challenge's values (the model card's ARC average)"}
        for (name, prefix, m), easy in values.items():
            if name == "arc_easy":
                interval = mean_of_means_interval([easy, values["arc_challenge", prefix, m]], seed)
                average.update(_rounded({k: v for k, v in interval.as_dict(f"{prefix}_{m}").items()
                                         if not k.endswith("_n")}))
        average[f"published_{PUBLISHED_METRIC}"] = round(PUBLISHED["arc_average"] / 100, 4)
        out["arc_average"] = average
    return out


def table(metrics: dict, conditions: list[str]) -> list[dict]:
    """One row per benchmark and condition, for the CSV."""
    rows = []
    for name, entry in metrics.items():
        for condition in conditions:
            row = {"benchmark": name, "split": entry["split"], "condition": condition, "n": entry["n"]}
            for m in METRICS:
                for column, key in ((m, f"{condition}_{m}"), (f"minus_full_{m}", f"{condition}_minus_full_{m}")):
                    for suffix in ("", "_ci_low", "_ci_high"):
                        if key + suffix in entry:
                            row[column + suffix] = entry[key + suffix]
            row[f"published_{PUBLISHED_METRIC}"] = entry.get(f"published_{PUBLISHED_METRIC}") if condition == "full" else None
            rows.append(row)
    return rows
