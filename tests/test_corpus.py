"""The corpus: stratified, deterministic, with disjoint splits; read from a BIG-bench-shaped tarball."""
import re
from pathlib import Path

import pytest

from ais.routing.corpus import CorpusError, TaskSpec, build_corpus, load_categories, read_tasks, render
from conftest import write_fake_bigbench

SPECS = [
    TaskSpec("math", "arith/add", "What is {input}?"),
    TaskSpec("math", "arith/mul", "Multiply: {input}"),
    TaskSpec("math", "physics", "Physics: {input}", heldout=True),
    TaskSpec("qa", "trivia", "{input}"),
    TaskSpec("qa", "wiki", "Complete: {input}"),
    TaskSpec("qa", "hindu", "Q: {input}", heldout=True),
]


def fake_examples(n=60):
    return {spec.task: [{"input": f"{spec.task} item {i} " + "x" * (i % 7)} for i in range(n)] for spec in SPECS}


def build(seed=1, **kw):
    sizes = dict(n=40, n_importance=3, n_heldout=5, n_heldout_task=4, max_chars=60)
    sizes.update(kw)
    return build_corpus(SPECS, fake_examples(), seed=seed, **sizes)


def test_splits_sizes_and_stratification():
    rows = build()
    count = lambda split, cat: sum(r["split"] == split and r["category"] == cat for r in rows)
    for cat in ("math", "qa"):
        assert count("map", cat) == 20
        assert count("importance", cat) == 3 and count("heldout", cat) == 5 and count("heldout_task", cat) == 4
    # each category's map split draws on all its map tasks, evenly
    add = sum(r["task"] == "arith/add" and r["split"] == "map" for r in rows)
    mul = sum(r["task"] == "arith/mul" and r["split"] == "map" for r in rows)
    assert abs(add - mul) <= 2


def test_splits_are_disjoint_and_heldout_tasks_absent_from_map():
    rows = build()
    texts = [r["prompt"] for r in rows]
    assert len(texts) == len(set(texts))
    heldout_tasks = {s.task for s in SPECS if s.heldout}
    assert {r["task"] for r in rows if r["split"] == "heldout_task"} <= heldout_tasks
    assert not heldout_tasks & {r["task"] for r in rows if r["split"] != "heldout_task"}


def test_deterministic_for_a_seed_and_different_across_seeds():
    assert build(seed=7) == build(seed=7)
    assert build(seed=7) != build(seed=8)


def test_prompts_are_cut_but_keep_their_instruction():
    assert render("Summarize:\n{input}", "abcdefghij" * 10, 30) == "Summarize:\n" + ("abcdefghij" * 2)[:19]
    rows = build(max_chars=32)
    assert all(len(r["prompt"]) <= 32 for r in rows)
    assert all(r["prompt"].startswith("Multiply: ") for r in rows if r["task"] == "arith/mul")


def test_too_large_a_corpus_is_a_clear_error():
    with pytest.raises(CorpusError, match="lower corpus.n"):
        build(n=1000)
    with pytest.raises(CorpusError, match="n_heldout_task=500"):
        build(n_heldout_task=500)


def test_read_tasks_from_tarball(tmp_path):
    archive = write_fake_bigbench(tmp_path / "bb.tar.gz", {"arith/add": ["1 + 1", "2 + 2"], "trivia": ["Who?"]})
    found = read_tasks(archive, {"arith/add", "trivia"})
    assert [e["input"] for e in found["arith/add"]] == ["1 + 1", "2 + 2"]
    with pytest.raises(CorpusError, match="tasks not found .*: nope"):
        read_tasks(archive, {"trivia", "nope"})
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(CorpusError, match="not a readable BIG-bench archive"):
        read_tasks(tmp_path / "broken.tar.gz", {"trivia"})


def test_category_file_errors(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("math:\n  - {task: a, template: 'no placeholder'}\n")
    with pytest.raises(CorpusError, match="no \\{input\\} placeholder"):
        load_categories(bad)
    bad.write_text("math:\n  - {task: a, heldout: true}\n")
    with pytest.raises(CorpusError, match="no task left for the map"):
        load_categories(bad)


def test_shipped_category_mapping_is_valid():
    specs = load_categories("data/categories.yaml")
    categories = {s.category for s in specs}
    assert len(categories) >= 8
    for c in categories:
        assert sum(not s.heldout for s in specs if s.category == c) >= 3, c
        assert any(s.heldout for s in specs if s.category == c), c


def _requests(tmp_path, lines):
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_users_requests_become_a_corpus_with_or_without_labels(tmp_path):
    import json

    from ais.routing.corpus import UNLABELLED, build_corpus, request_examples

    labelled = _requests(tmp_path, [json.dumps({"prompt": f"request {i} about {c}", "category": c})
                                    for c in ("billing", "travel") for i in range(6)])
    specs, examples = request_examples(labelled, 4)
    assert [s.category for s in specs] == ["billing", "travel"] and len(examples["jsonl/billing"]) == 6
    rows = build_corpus(specs, examples, n=4, n_importance=1, n_heldout=2, n_heldout_task=0, max_chars=200, seed=0)
    assert {r["split"] for r in rows} == {"map", "importance", "heldout"}
    unlabelled = _requests(tmp_path, [json.dumps({"prompt": f"what is {i}?"}) for i in range(5)])
    specs, examples = request_examples(unlabelled, 3)
    assert [s.category for s in specs] == [UNLABELLED] and len(examples[f"jsonl/{UNLABELLED}"]) == 5
    shipped = request_examples(Path(__file__).resolve().parents[1] / "data/requests.example.jsonl")[0]
    assert len({s.category for s in shipped}) >= 3  # the example file the params point at


@pytest.mark.parametrize("lines,message", [
    (['{"prompt": "a", "category": "x"}', "not json"], "line 2 is not JSON"),
    (['["a list"]'], "line 1 is a list, not an object"),
    (['{"category": "x"}'], "line 1 has no `prompt`"),
    (['{"prompt": "   ", "category": "x"}'], "line 1: `prompt` is '   '"),
    (['{"prompt": "a", "category": 3}'], "line 1: `category` is 3"),
    (['{"prompt": "a", "category": "x"}', '{"prompt": "b"}'], "line 2 has no `category`, unlike the lines before it"),
    (['{"prompt": "a"}', '', '{"prompt": "a"}'], "line 3 repeats the prompt of line 1"),
    (['{"prompt": "a", "category": "x"}', '{"prompt": "b", "category": "y"}', '{"prompt": "c", "category": "y"}'],
     "category 'x' has 1 requests, fewer than the 2"),
])
def test_a_bad_requests_file_gives_one_error_naming_the_line(tmp_path, lines, message):
    from ais.routing.corpus import CorpusError, request_examples

    with pytest.raises(CorpusError, match=re.escape(message)):
        request_examples(_requests(tmp_path, lines), 2)
