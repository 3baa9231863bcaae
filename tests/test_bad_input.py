"""Every bad input gets one clear error, and nothing already written is lost."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
import yaml

from ais.files import atomic_dir, atomic_file, write_text
from ais.model.prompts import PromptError, check_prompt, encode_prompts
from ais.model.loading import ModelError, load_model
from ais.params import SCHEMA, ParamsError, check_params, get, load_params
from ais.routing.budget import SkipSettings, n_layers_to_skip
from ais.routing.topomap import TopoMap
from conftest import tiny_llama, tiny_tokenizer

GOOD_SKIP = {"mode": "hard", "plan": "category", "alpha": 0.7, "select": "fraction", "fraction": 0.1, "threshold": 0.05, "critical": 0.9}


@pytest.mark.parametrize("key,value,message", [
    ("alpha", 1.0, "`skip.alpha` is 1.0; it must be < 1"),
    ("alpha", 0, "`skip.alpha` is 0; it must be > 0"),
    ("alpha", -0.2, "`skip.alpha` is -0.2; it must be > 0"),
    ("alpha", "0.7", "`skip.alpha` is '0.7' (str); it must be float"),
    ("fraction", 1.0, "`skip.fraction` is 1.0; it must be < 1"),
    ("fraction", -0.1, "`skip.fraction` is -0.1; it must be >= 0"),
    ("fraction", "half", "`skip.fraction` is 'half' (str); it must be float"),
    ("mode", "medium", "`skip.mode` is 'medium'; it must be one of hard, soft"),
    ("select", "top", "`skip.select` is 'top'; it must be one of fraction, threshold"),
    ("critical", True, "`skip.critical` is True (bool); it must be float"),
])
def test_bad_skip_params(key, value, message):
    settings = SkipSettings.from_params({"skip": {**GOOD_SKIP, key: value}})
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        getattr(settings, key)  # each key is checked when it is read
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_params({**load_params("params.yaml"), "skip": {**GOOD_SKIP, key: value}})


def test_method_names_and_the_model_source_are_checked_before_any_stage_runs(tmp_path):
    from ais.methods import check_names
    from ais.model.loading import source_problem

    params = load_params("params.yaml")
    assert check_names(params) == []
    bad = {**params, "skip": {**params["skip"], "plan": "token"}, "validate": {**params["validate"], "methods": ["oracle", "x"]}}
    problems = check_names(bad)
    assert len(problems) == 2 and "`skip.plan` names 'token', which is not a deployable method" in problems[0]
    assert "`validate.methods` names 'x'" in problems[1]
    assert "deployable" in check_names({**params, "skip": {**params["skip"], "plan": "oracle"}})[0]  # a control
    assert source_problem("embedded") is None and source_problem("qwen2.5-coder-0.5b") is None
    assert source_problem("meta-llama/Llama-3.2-1B-Instruct") is None  # a hub id: the model stage tells
    assert source_problem(str(tmp_path)) is None
    assert "does not exist" in source_problem("/nonexistent")
    assert "neither" in source_problem("no such thing")


def test_missing_param_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="params.yaml has no `skip.alpha`"):
        get({"skip": {}}, "skip.alpha", float)
    bad = tmp_path / "params.yaml"
    bad.write_text("skip: [unclosed")
    with pytest.raises(ParamsError, match="is not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found: run from the repository root"):
        load_params(tmp_path / "nope.yaml")


def test_k_larger_than_the_map_and_fraction_guard():
    with pytest.raises(ParamsError, match="`router.k` is 6000; it must be <= 5000"):
        get({"router": {"k": 6000}}, "router.k", int, lo=1, hi=5000)
    with pytest.raises(ParamsError, match="must be in \\[0, 1\\)"):
        n_layers_to_skip(1.5, 30)


def test_the_shipped_params_are_valid_and_every_key_has_a_schema_entry():
    params = load_params("params.yaml")
    check_params(params)
    SkipSettings.from_params(params)
    leaves = {f"{section}.{key}" for section, values in params.items() for key in values}
    assert leaves == set(SCHEMA), "params.yaml and params.SCHEMA list different keys"


def test_the_whole_file_check_lists_every_problem_and_says_how_to_restore():
    params = load_params("params.yaml")
    params["skip"]["alpha"] = 1.5
    params["frontier"]["fractions"] = [0.1, 1.2]
    params["router"]["kind"] = "nearest"
    params["skip"]["alpah"] = 0.5
    del params["lossless"]["gamma"]
    with pytest.raises(ParamsError) as err:
        check_params(params)
    message = str(err.value)
    for part in ("`skip.alpha` is 1.5; it must be < 1", "`frontier.fractions[1]` is 1.2; it must be < 1",
                 "`router.kind` is 'nearest'; it must be one of knn, learned", "params.yaml has no `lossless.gamma`",
                 "`skip.alpah` is not a parameter any stage reads (known keys of `skip`: alpha,",
                 "git show HEAD:params.yaml > params.yaml"):
        assert part in message, part


@pytest.mark.parametrize("prompt,message", [
    ("", "prompt is empty"),
    ("   \n\t ", "prompt is empty"),
    (b"caf\xe9 au lait", "not valid UTF-8"),
    (None, "prompt must be text"),
])
def test_bad_prompts(prompt, message):
    with pytest.raises(PromptError, match=message):
        check_prompt(prompt)


def test_too_long_prompt_is_truncated_with_a_warning():
    tok = tiny_tokenizer()
    with pytest.warns(UserWarning, match="more than the model's context of 8; keeping its last 8 tokens"):
        batch = encode_prompts(tok, ["what is the capital of france " * 5], "cpu", max_length=8)
    assert batch["input_ids"].shape[1] == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_prompts(tok, ["sum"], "cpu", max_length=64)


def _saved_tiny(tmp_path, model=None):
    model = model or tiny_llama()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (folder / "model_card.json").write_text(json.dumps({"n_layers": 6}))
    return folder


def test_missing_truncated_or_foreign_model(tmp_path):
    with pytest.raises(ModelError, match="does not exist: run `dvc repro model` first"):
        load_model(tmp_path / "absent")
    folder = _saved_tiny(tmp_path)
    assert load_model(folder, "float32", "cpu")[0].config.num_hidden_layers == 6
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match="could not load the checkpoint"):
        load_model(folder, "float32", "cpu")
    (folder / "model_card.json").write_text("{ not json")
    with pytest.raises(ModelError, match="model_card.json is corrupt"):
        load_model(folder, "float32", "cpu")


def test_non_llama_checkpoint_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=64))
    folder = tmp_path / "gpt2"
    gpt2.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (folder / "model_card.json").write_text("{}")
    with pytest.raises(ModelError, match="model_type='gpt2' is not supported"):
        load_model(folder, "float32", "cpu")


WRITER = """
import sys, time
from ais.files import atomic_file
with atomic_file(sys.argv[1]) as tmp:
    with open(tmp, "w") as f:
        for i in range(10_000):
            f.write("new line %d\\n" % i); f.flush()
            if i == 100:
                print("writing", flush=True)
            time.sleep(0.001)
"""


def test_killed_writer_leaves_previous_output_intact(tmp_path):
    target = tmp_path / "out.jsonl"
    write_text(target, "previous complete output\n")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_text() == "previous complete output\n"


def test_failed_map_save_keeps_previous_map(tmp_path, monkeypatch):
    vectors = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    TopoMap(vectors, np.arange(10) % 2, ["a", "b"], {"hidden_size": 8}).save(tmp_path / "map")
    before = {p.name: p.read_bytes() for p in (tmp_path / "map").iterdir()}
    import ais.routing.topomap

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ais.routing.topomap, "save_npz", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        TopoMap(vectors[::-1].copy(), np.arange(10) % 2, ["a", "b"], {"hidden_size": 8}).save(tmp_path / "map")
    assert {p.name: p.read_bytes() for p in (tmp_path / "map").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["map"]  # no temporary folder left behind


def test_atomic_file_leaves_nothing_on_error(tmp_path):
    with pytest.raises(ValueError):
        with atomic_file(tmp_path / "x.json") as tmp:
            tmp.write_text("half")
            raise ValueError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("half")
            raise ValueError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_stage_with_bad_param_prints_one_clear_line_and_writes_nothing(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["skip"]["alpha"] = 1.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, str(repo / "stages/check_params.py")], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("error: `skip.alpha` is 1.5; it must be < 1. params.yaml still holds")
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
