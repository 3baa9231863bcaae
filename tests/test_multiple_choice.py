"""Multiple choice through lm-evaluation-harness: its own tasks on local JSONL files, offline; each
request scored under its context's plan; bad data refused before the harness runs."""
import json

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from ais.evaluation.benchmarks import BENCHMARKS, BenchmarkError, sample_rows
from ais.evaluation.multiple_choice import SkipLM, evaluate, skip_conditions, table, write_task_configs
from ais.model.engine import Engine
from ais.model.plan import NO_SKIP, SkipPlan
from ais.params import BENCHMARKS as ALLOWED
from conftest import tiny_llama, tiny_routed_decoder, tiny_tokenizer

WORDS = "the a is of what sum story code add two plus capital france paris number".split()


def fake_rows(name: str, n: int, rng) -> list[dict]:
    """Rows in the shape each harness task reads, built from words the tiny tokenizer knows."""
    def text(k):
        return " ".join(rng.choice(WORDS, k))
    rows = []
    for i in range(n):
        if name == "hellaswag":
            rows.append({"activity_label": text(2), "ctx_a": text(5), "ctx_b": text(2),
                         "endings": [text(4) for _ in range(4)], "label": i % 4})
        elif name.startswith("arc"):
            rows.append({"id": str(i), "question": text(6), "answerKey": "ABC"[i % 3],
                         "choices": {"text": [text(3) for _ in range(3)], "label": ["A", "B", "C"]}})
        elif name == "piqa":
            rows.append({"goal": text(6), "sol1": text(5), "sol2": text(5), "label": i % 2})
        else:
            rows.append({"question": text(6), "subject": ["abstract_algebra", "world_religions"][i % 2],
                         "choices": [text(2) for _ in range(4)], "answer": i % 4})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data_dir(tmp_path):
    rng = np.random.default_rng(0)
    for name in BENCHMARKS:
        write_jsonl(tmp_path / f"{name}.jsonl", fake_rows(name, 4, rng))
    return tmp_path


def test_every_benchmark_and_condition_runs_through_the_harness_end_to_end(data_dir):
    model, tok = tiny_llama(), tiny_tokenizer()
    decoder = tiny_routed_decoder(model, tok, ["what is the capital of france", "write a story"], [0, 1])
    conditions, routes = skip_conditions(decoder, tok, seed=0, other_mode=True)
    metrics, rows = evaluate(model, tok, data_dir, list(BENCHMARKS), conditions, routes, batch_size=4, progress=False)
    assert list(conditions) == ["full", "routed", "global", "random", "routed_soft"]
    assert len(rows) == len(BENCHMARKS) * len(conditions) * 4
    assert {(r["benchmark"], r["condition"]) for r in rows} == {(b, c) for b in BENCHMARKS for c in conditions}
    assert all(r["routed_category"] in ("a", "b") for r in rows)  # known for full too: routed in a later run
    for name in BENCHMARKS:
        entry = metrics[name]
        assert entry["n"] == 4
        for key in ("full_acc", "full_acc_ci_low", "full_acc_norm_ci_high", "random_minus_full_acc",
                    "routed_soft_minus_full_acc_norm_ci_low", "routed_minus_global_acc", "routed_minus_global_acc_norm"):
            assert key in entry, (name, key)
        assert 0 <= entry["full_acc"] <= 1
    assert metrics["arc_easy"]["split_note"] and metrics["mmlu"]["published_acc_norm"] == 0.293
    assert metrics["arc_average"]["full_acc_ci_low"] <= metrics["arc_average"]["full_acc"] == round((metrics["arc_easy"]["full_acc"]
                                                        + metrics["arc_challenge"]["full_acc"]) / 2, 4)
    assert len(table(metrics, list(conditions))) == (len(BENCHMARKS) + 1) * len(conditions)


def test_mmlu_prompt_is_the_harness_continuation_prompt_with_each_rows_subject(data_dir):
    from lm_eval.tasks import TaskManager

    tasks = write_task_configs(data_dir, {"mmlu": data_dir / "mmlu.jsonl"})
    task = TaskManager(include_path=str(data_dir), include_defaults=False).load([tasks["mmlu"]])["tasks"]
    task = next(iter(task.values()))
    docs = list(task.eval_docs)
    first, second = (task.fewshot_context(d, 0) for d in docs[:2])
    assert first == ("The following are questions (with answers) about abstract algebra.\n\n"
                     f"Question: {docs[0]['question'].strip()}\nAnswer:")
    assert second.startswith("The following are questions (with answers) about world religions.\n\nQuestion: ")


def direct_loglikelihood(model, tok, context, continuation, plan):
    """Sum of the continuation's token log-probabilities after the context, one plain forward."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    engine = Engine(model)
    logprobs = torch.log_softmax(engine.head(engine.forward(torch.tensor([whole]), plans=[plan]))[0], -1)
    return float(sum(logprobs[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


def test_each_request_is_scored_under_its_routed_categorys_plan():
    model, tok = tiny_llama(dtype=torch.float64), tiny_tokenizer()
    contexts = ["what is the capital of france", "write a story", "add two plus two", "summarize the code"]
    decoder = tiny_routed_decoder(model, tok, contexts, [0, 1, 0, 1])
    conditions, routes = skip_conditions(decoder, tok, seed=0)
    requests = [Instance("loglikelihood", {}, (c, f" {w}"), 0) for c in contexts for w in ("paris", "the number")]
    lm = SkipLM(model, tok, conditions["routed"], batch_size=3)
    scores = [s for s, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert routes.categories(contexts) == ["a", "b", "a", "b"]
    plans = {"a": SkipPlan.make(hard=[4]), "b": SkipPlan.make(hard=[3])}
    for request, score in zip(requests, scores):
        context, continuation = request.args
        plan = plans[routes.category[context]]
        assert score == pytest.approx(direct_loglikelihood(model, tok, context, continuation, plan), abs=1e-9)
        assert score != pytest.approx(direct_loglikelihood(model, tok, context, continuation, NO_SKIP), abs=1e-6)


def test_controls_skip_as_many_layers_as_the_routed_plan():
    model, tok = tiny_llama(), tiny_tokenizer()
    contexts = ["what is the capital of france", "write a story"]
    conditions, _ = skip_conditions(tiny_routed_decoder(model, tok, contexts, [0, 1]), tok, seed=3, other_mode=True)
    assert conditions["global"](contexts) == [SkipPlan.make(hard=[3])] * 2  # lowest pooled importance past the pivot
    drawn = conditions["random"](contexts)
    assert all(len(p.hard) == 1 and min(p.hard) >= 2 for p in drawn)
    assert conditions["random"](contexts[::-1]) == drawn[::-1]  # one draw per context, kept
    assert conditions["routed_soft"](contexts) == [SkipPlan.soft_of([4], 0.6), SkipPlan.soft_of([3], 0.6)]


def test_a_missing_file_fails_with_one_error_naming_it(tmp_path):
    missing = tmp_path / "piqa.jsonl"
    with pytest.raises(BenchmarkError, match=f"{missing} not found.*dvc repro benchmarks"):
        evaluate(tiny_llama(), tiny_tokenizer(), tmp_path, ["piqa"], {"full": lambda c: [NO_SKIP] * len(c)},
                 progress=False)


@pytest.mark.parametrize("name,field", [("piqa", "label"), ("hellaswag", "label"), ("mmlu", "answer"),
                                        ("arc_easy", "answerKey")])
def test_a_string_label_fails_with_one_error_naming_the_file(tmp_path, name, field):
    rows = fake_rows(name, 3, np.random.default_rng(1))
    rows[1][field] = "1" if field != "answerKey" else "E"
    path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    with pytest.raises(BenchmarkError, match=f"{path} line 2: `{field}` is '(1|E)'"):
        evaluate(tiny_llama(), tiny_tokenizer(), tmp_path, [name], {"full": lambda c: [NO_SKIP] * len(c)},
                 progress=False)


def test_mmlu_sample_is_stratified_over_subjects_and_seeded():
    rows = [{"subject": s, "i": i} for s in "abc" for i in range(10)] + [{"subject": "d", "i": 0}]
    chosen = sample_rows(rows, 9, seed=5, stratify="subject")
    counts = {s: sum(r["subject"] == s for r in chosen) for s in "abcd"}
    assert counts["d"] == 1 and sorted(counts.values()) == [1, 2, 3, 3]  # round-robin: 4 + 3 + 2
    assert chosen == sample_rows(rows, 9, seed=5, stratify="subject")
    assert len(sample_rows(rows, 100, seed=5)) == len(rows)


def test_benchmark_choices_match_the_benchmarks_the_stage_can_read():
    assert set(ALLOWED) == set(BENCHMARKS)


@pytest.mark.parametrize("plan", [NO_SKIP, SkipPlan.make(hard=[3]), SkipPlan.soft_of([2, 4], 0.5)],
                         ids=["full", "hard", "soft"])
def test_packed_options_score_as_the_harness_scores_them_one_by_one(plan):
    model, tok = tiny_llama(dtype=torch.float64), tiny_tokenizer()
    contexts = ["what is the capital of france", "write a story", "add two plus two is"]
    requests = [Instance("loglikelihood", {}, (c, f" {w}"), 0)
                for c in contexts for w in ("paris", "the number of", "a b c d e", "x")]
    packed = SkipLM(model, tok, lambda c: [plan] * len(c), batch_size=2).loglikelihood(requests, disable_tqdm=True)
    harness = HFLM(pretrained=model, tokenizer=tok, batch_size=3)
    if not plan.is_empty():  # the harness's own scoring, each forward of its model replaced by the engine's under the plan
        engine = Engine(model)
        harness._model_call = lambda inps, attn_mask=None, labels=None: engine.head(engine.forward(inps, plans=[plan] * len(inps)))
    theirs_all = harness.loglikelihood(requests, disable_tqdm=True)
    for (ours, ours_greedy), (theirs, theirs_greedy) in zip(packed, theirs_all):
        assert ours == pytest.approx(theirs, abs=1e-9) and ours_greedy == theirs_greedy


def test_generation_runs_each_request_under_its_own_plan_in_one_batch():
    from ais.decoding.greedy import generate
    from ais.model.prompts import encode_prompts

    model, tok = tiny_llama(dtype=torch.float64), tiny_tokenizer()
    contexts = ["what is the capital of france", "write a story"]
    plans = {contexts[0]: SkipPlan.make(hard=[3]), contexts[1]: SkipPlan.make(attention=[2, 4])}
    lm = SkipLM(model, tok, lambda cs: [plans[c] for c in cs], batch_size=2)
    requests = [Instance("generate_until", {}, (c, {"until": ["zzz"], "max_gen_toks": 5, "do_sample": False}), 0)
                for c in contexts]
    replies = lm.generate_until(requests, disable_tqdm=True)
    for context, reply in zip(contexts, replies):
        ids = tok(context, add_special_tokens=False, return_tensors="pt")
        alone = generate(Engine(model), {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}, 5,
                         [plans[context]], eos_token_id=tok.eos_token_id)[0]
        assert reply == tok.decode(alone[alone != 0] if (alone == 0).any() else alone, skip_special_tokens=True)


def test_a_question_longer_than_the_model_goes_to_the_harness_scoring(monkeypatch):
    model, tok = tiny_llama(dtype=torch.float64), tiny_tokenizer()
    requests = [Instance("loglikelihood", {}, ("what is the capital of france", f" {w}"), 0) for w in ("paris", "two")]
    lm = SkipLM(model, tok, batch_size=2)
    expected = lm.loglikelihood(requests, disable_tqdm=True)
    context_and_option = max(len(r) for r in lm.tok_batch_encode([r.args[0] + r.args[1] for r in requests])[0])
    lm._max_length = context_and_option  # shorter than the packed row, enough for context + one option
    handed_over = []
    original = HFLM._loglikelihood_tokens
    monkeypatch.setattr(HFLM, "_loglikelihood_tokens", lambda self, reqs, *a: handed_over.append(reqs) or
                        original(self, reqs, *a))
    fallback = lm.loglikelihood(requests, disable_tqdm=True)
    assert [len(r) for r in handed_over] == [2]
    assert [s for s, _ in fallback] == pytest.approx([s for s, _ in expected], abs=1e-9)


def test_every_condition_scored_in_one_shared_pass_scores_as_each_alone():
    """SharedScores runs the layers no plan touches once per question, then one row per condition: each
    condition's log-likelihoods are the ones its own SkipLM computes."""
    from ais.evaluation.multiple_choice import SharedScores

    model, tok = tiny_llama(dtype=torch.float64), tiny_tokenizer()
    contexts = ["what is the capital of france", "write a story", "add two plus two"]
    decoder = tiny_routed_decoder(model, tok, contexts, [0, 1, 0])
    conditions, _ = skip_conditions(decoder, tok, seed=0)
    requests = [Instance("loglikelihood", {}, (c, f" {w}"), 0) for c in contexts for w in ("paris", "the number", "x")]
    shared = SharedScores(Engine(model), conditions)
    for name, chooser in conditions.items():
        together = SkipLM(model, tok, chooser, batch_size=2, shared=shared, condition=name).loglikelihood(
            requests, disable_tqdm=True)
        alone = SkipLM(model, tok, chooser, batch_size=2).loglikelihood(requests, disable_tqdm=True)
        assert [g for _, g in together] == [g for _, g in alone]
        assert [s for s, _ in together] == pytest.approx([s for s, _ in alone], abs=1e-9), name
    assert len(shared.kept) == len(conditions) * len(contexts)
