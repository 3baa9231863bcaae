"""Multiple-choice benchmarks under skipping, scored by lm-evaluation-harness with its own task
definitions (prompts, metrics, HellaSwag's preprocessing), zero-shot and offline.

Data: one JSONL file per benchmark (`benchmarks.write_benchmarks`). At run time a local task YAML per
benchmark `include`s the harness's own YAML and replaces only the data source and split
(`write_task_configs`). The model is the harness's HFLM with two changes (`SkipLM`): each request is
scored by the engine under the skip plan its context is given by a plan chooser (every row of a batch
under its own plan, in one pass), and the options of a question are scored in one packed sequence
(the context once, each option attending to it and to itself): the same log-likelihoods as HFLM's
(tested), about half the compute."""
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

from ais.decoding.greedy import decode, prefill  # noqa: E402
from ais.evaluation.benchmarks import BENCHMARKS, BenchmarkError, check_data, check_names  # noqa: E402
from ais.evaluation.statistics import mean_interval, mean_of_means_interval, rounded  # noqa: E402
from ais.methods import make  # noqa: E402
from ais.model.engine import Engine  # noqa: E402
from ais.model.plan import NO_SKIP, SkipPlan, make_plan  # noqa: E402
from ais.routing.budget import OTHER_MODE  # noqa: E402

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
    """The harness's HFLM on an already loaded model, each request scored by the engine under the
    plan that `choose_plans` gives its context: every distinct context is given its plan once (one
    call per request list), and a batch's rows run under their own plans in one pass. Generation
    (`generate_until`) is greedy, on the engine, every row under its own plan; rolling
    log-likelihoods are scored one document at a time under its plan."""

    def __init__(self, model, tokenizer, choose_plans: PlanChooser = no_skip, batch_size: int = 16,
                 shared: "SharedScores | None" = None, condition: str | None = None, **kwargs):
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **kwargs)
        self.choose_plans = choose_plans
        self.engine = Engine(model)
        self.shared, self.condition = shared, condition  # every condition scored in one pass, kept for the others
        self._plans: dict[str, SkipPlan] = {}
        self._by_tokens: dict[tuple, SkipPlan] = {}
        self._document_plan: SkipPlan | None = None

    def plans_for(self, contexts: list[str]) -> dict[str, SkipPlan]:
        """{context: plan} for the distinct contexts (kept for the requests' scoring)."""
        distinct = [c for c in dict.fromkeys(contexts) if c not in self._plans]
        plans = list(self.choose_plans(distinct)) if distinct else []
        if len(plans) != len(distinct) or not all(isinstance(p, SkipPlan) for p in plans):
            raise BenchmarkError(f"the plan chooser must return one SkipPlan per context: got {len(plans)} "
                                 f"values for {len(distinct)} contexts")
        self._plans.update(zip(distinct, plans))
        return {c: self._plans[c] for c in contexts}

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self.plans_for([req.args[0] for req in requests])
        return super().loglikelihood(requests, disable_tqdm)

    def _plan_of(self, request) -> SkipPlan:
        key = request[0]
        if isinstance(key, tuple) and key and key[0] in self._plans:
            return self._plans[key[0]]
        if self._document_plan is not None:
            return self._document_plan
        raise BenchmarkError(f"no plan was chosen for the context of request {key!r}")

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        """HFLM's token scoring, (log-likelihood, is greedy) per request, with every distinct context
        run once and its continuations packed after it, each under its own plan; longest first,
        `batch_size` contexts a batch. Contexts whose pack exceeds the model's length go to HFLM's own
        (truncating) scoring, one plan at a time."""
        by_context: dict[tuple, list[int]] = {}
        for i, (_, context, continuation) in enumerate(requests):
            by_context.setdefault((self._plan_of(requests[i]), tuple(context)), []).append(i)
        size = {c: len(c[1]) + sum(len(requests[i][2]) for i in members) for c, members in by_context.items()}
        too_long = [c for c in by_context if size[c] > self.max_length]
        contexts = sorted((c for c in by_context if size[c] <= self.max_length), key=lambda c: -size[c])
        results: list = [None] * len(requests)
        for key in too_long:  # HFLM's own path: one forward per request, the plan as the only plan of the batch
            members = by_context[key]
            for i, value in zip(members, self._hflm_scores([requests[i] for i in members], key[0], override_bs)):
                results[i] = value
        batch = int(override_bs or self.batch_size)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in tqdm(range(0, len(contexts), batch), desc="scoring", unit="batch", leave=False,
                          disable=disable_tqdm):
            chunk = contexts[start:start + batch]
            owners = [i for c in chunk for i in by_context[c]]
            questions = [(list(c[1]), [requests[i][2] for i in by_context[c]]) for c in chunk]
            if self.shared is not None and all(isinstance(requests[by_context[c][0]][0], tuple) for c in chunk):
                texts = [requests[by_context[c][0]][0][0] for c in chunk]
                values = self.shared.scores(self.condition, texts, questions, pad)
            else:
                values = score_packed(self.engine, pack_options(questions, pad), self.device, [c[0] for c in chunk])
            for i, value in zip(owners, values):
                results[i] = value
                self.cache_hook.add_partial("loglikelihood", requests[i][0], value)
        return results

    def _hflm_scores(self, requests, plan: SkipPlan, override_bs):
        """Requests too long to pack, scored by HFLM's own truncating path with the engine as the model."""
        engine = self.engine

        def call(inps, attn_mask=None, labels=None):
            hidden = engine.forward(inps, None, [plan] * inps.shape[0])
            return engine.head(hidden)

        original = self._model_call
        self._model_call = call
        try:
            return super()._loglikelihood_tokens(requests, True, override_bs)
        finally:
            self._model_call = original

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        plans = self.plans_for([req.args[0] for req in requests])
        out = []
        for req in requests:
            self._document_plan = plans[req.args[0]]
            try:
                out += super().loglikelihood_rolling([req], disable_tqdm=True)
            finally:
                self._document_plan = None
        return out

    def generate_until(self, requests, disable_tqdm: bool = False):
        plans = self.plans_for([req.args[0] for req in requests])
        self._by_tokens = {tuple(self.tok_encode(c)[-32:]): p for c, p in plans.items()}
        return super().generate_until(requests, disable_tqdm)

    def _model_generate(self, context, max_length: int, stop, **generation_kwargs):
        """Greedy generation on the engine, each row under its context's plan (sampling is refused)."""
        if generation_kwargs.get("do_sample"):
            raise BenchmarkError("SkipLM generates greedily only (do_sample=True was asked)")
        mask = generation_kwargs.get("attention_mask")
        mask = torch.ones_like(context) if mask is None else mask
        plans = []
        for row, row_mask in zip(context.tolist(), mask.tolist()):
            ids = tuple(t for t, m in zip(row, row_mask) if m)
            plan = self._by_tokens.get(ids[-32:])
            if plan is None:
                raise BenchmarkError("a generation's context has no plan (its tokens match no request's context)")
            plans.append(plan)
        flight, logits = prefill(self.engine, {"input_ids": context, "attention_mask": mask}, plans)
        new, _ = decode(flight, logits.argmax(-1), max_length - context.shape[1], self.eot_token_id,
                        self.tokenizer.pad_token_id or 0)
        return torch.cat([context, new], 1)

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


def pack_options(questions: list[tuple[list[int], list[list[int]]]], pad_id: int) -> Packed:
    """One row per (context, continuations): the context, then each continuation at the positions
    it would have after the context alone, attending causally to the context and to itself only.
    Padding attends to itself (no empty softmax row). The mask is boolean (True = attend)."""
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
    return Packed(ids, allowed.unsqueeze(1), positions, options)


@torch.no_grad()
def score_packed(engine, packed: Packed, device, plans: list[SkipPlan] | None = None, repeats: int | None = None):
    """(sum of log-probabilities, every token the argmax) per option, as HFLM computes them
    (log-softmax in the model's dtype), each packed row under its own plan; only the scored positions
    go through the final norm and the head. With `repeats`, every packed row is scored under `repeats`
    plans (`plans[row * repeats + i]`): the layers below the lowest one any plan touches run once per
    row, then the rows fan out; returns one list per plan index i, each of the packed rows' options."""
    ids, mask, positions = (packed.input_ids.to(device), packed.attention_mask.to(device),
                            packed.position_ids.to(device))
    if repeats is None:
        hidden = engine.forward(ids, mask, plans, position_ids=positions)
        return _option_scores(engine, hidden, packed.options)
    at = min((min(p.touched) for p in plans if not p.is_empty()), default=engine.n_layers)
    shared = engine.forward(ids, mask, None, position_ids=positions, stop=at)
    rep = (lambda t: t.repeat_interleave(repeats, 0))
    hidden = engine.forward(rep(ids), rep(mask), plans, position_ids=rep(positions), start=at, hidden=rep(shared))
    out = []
    for i in range(repeats):
        scores = _option_scores(engine, hidden[i::repeats], packed.options)
        per_row, k = [], 0
        for row in range(len(packed.input_ids)):
            count = sum(1 for r, _, _ in packed.options if r == row)
            per_row.append(scores[k:k + count])
            k += count
        out.append(per_row)
    return out


def _option_scores(engine, hidden: torch.Tensor, options) -> list[tuple[float, bool]]:
    device = hidden.device
    rows = torch.tensor([row for row, positions, _ in options for _ in positions], device=device)
    columns = torch.tensor([p for _, positions, _ in options for p in positions], device=device)
    logprobs = torch.log_softmax(engine.head(hidden[rows, columns]), dim=-1)
    out, start = [], 0
    for _, _, continuation in options:
        part = logprobs[start:start + len(continuation)]
        start += len(continuation)
        target = torch.tensor(continuation, device=part.device)
        out.append((float(part[torch.arange(len(continuation), device=part.device), target].sum()),
                    bool((part.argmax(-1) == target).all())))
    return out


class SharedScores:
    """Packed questions scored under every condition at once: the layers below the lowest layer any
    condition's plan touches run once per question, then each question fans out into one row per
    condition (`score_packed`). The first condition's harness run computes them all; the others read
    them back (the harness hands each run the same requests)."""

    def __init__(self, engine, choosers: dict[str, PlanChooser]):
        self.engine, self.choosers = engine, choosers
        self.kept: dict[tuple, tuple[float, bool]] = {}

    def scores(self, condition: str, contexts: list[str], questions: list[tuple[list[int], list[list[int]]]],
               pad: int) -> list[tuple[float, bool]]:
        keys = [(tuple(ctx), tuple(tuple(o) for o in options)) for ctx, options in questions]
        if any((condition, k) not in self.kept for k in keys):
            names = list(self.choosers)
            plans = {name: list(self.choosers[name](contexts)) for name in names}
            fanned = [plans[name][r] for r in range(len(questions)) for name in names]
            values = score_packed(self.engine, pack_options(questions, pad), self.engine.device, fanned, len(names))
            for name_index, name in enumerate(names):
                for r, key in enumerate(keys):
                    self.kept[(name, key)] = values[name_index][r]
        return [v for k in keys for v in self.kept[(condition, k)]]


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


def skip_conditions(decoder, tokenizer, seed: int, methods: Sequence[str] = ("global", "random"),
                    other_mode: bool = False) -> tuple[dict[str, PlanChooser], RouteCache]:
    """The plan choosers of the conditions, all in `skip.mode`: full (no skip); routed (the context's
    plan by `skip.plan`'s method); each named method with as many layers as the routed plan of the
    context (global: one plan for every context; random: layers drawn at random from the range a
    plan may use, one seeded draw per context); routed_<other mode> (the routed layers in the other
    mode) only with `other_mode`. Every plan skips the context too."""
    settings, routes = decoder.settings, RouteCache(decoder, tokenizer)
    other = OTHER_MODE[settings.mode]
    decoder.setup.seed = seed

    def routed(contexts):
        return [r.plan for r in routes.routes(contexts)]

    def of(method):
        def choose(contexts):
            requests = decoder.requests(routes.routes(contexts), contexts)
            return [method.plan(q, decoder.setup.budget(len(p.layers))) for q, p in zip(requests, routed(contexts))]
        return choose

    def routed_other(contexts):
        return [make_plan(p.layers, other, settings.alpha) for p in routed(contexts)]

    conditions = {"full": no_skip, "routed": routed}
    conditions.update({name: of(make(name, decoder.setup)) for name in methods})
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
        shared = SharedScores(Engine(model), conditions)  # the first run scores every condition at once
        for condition, chooser in tqdm(conditions.items(), desc="multiple choice", unit="condition",
                                       disable=not progress):
            lm = SkipLM(model, tokenizer, chooser, batch_size=batch_size, shared=shared, condition=condition)
            results[condition] = run_harness(lm, manager, [tasks[name] for name in names], seed)
    for condition in conditions:  # after every run: a question's routed category is known once any condition routed it
        for name in names:
            rows += question_rows(results[condition], name, tasks[name], condition, routes)
    return summarise(rows, list(conditions), seed), rows


def _interval(values, seed: int, prefix: str) -> dict:
    """Mean and 95% interval as flat keys (prefix, prefix_ci_low, prefix_ci_high); n is kept once per benchmark."""
    interval = mean_interval(values, seed)
    return rounded({k: v for k, v in interval.as_dict(prefix).items() if k != f"{prefix}_n"})


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
                average.update(rounded({k: v for k, v in interval.as_dict(f"{prefix}_{m}").items()
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
