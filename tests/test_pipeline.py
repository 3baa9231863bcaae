"""Integration: the whole DVC pipeline on a tiny random Llama checkpoint (6 layers, a word-level
tokenizer with a chat template: `model.source` a local folder, as a user's own model would be) with
small params, built once in a temporary copy of the repo (every stage traced), then checked: what each stage reports, that
dvc.yaml declares exactly what each stage reads and writes, determinism, the CLI and API, failures
that lose nothing, an experiment that changes skip.alpha (only what measures soft skipping reruns),
a queued sweep and a remote round trip. The tests share the build and run in this order."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_llama, tiny_tokenizer, write_fake_bigbench
from ais.params import EFFECTIVE
from layout import covered, declared, traced_stages

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]

CATEGORIES = {
    "math": [("arith/add", "What is {input}?", False), ("arith/mul", "Multiply {input}.", False),
             ("physics", "Physics question: {input}", True)],
    "story": [("gen/common", "Write a sentence with the words: {input}", False),
              ("gen/story", "Write a short story about {input}.", False),
              ("gen/webnlg", "Write a sentence that expresses: {input}", True)],
    "qa": [("qa/wiki", "Complete this fact: {input}", False), ("qa/general", "Question: {input}", False),
           ("qa/hindu", "{input}", True)],
}
WORDS = "river mountain teacher engine garden violin planet kitchen winter harbor".split()


def fake_inputs(task: str, n: int = 40) -> list[str]:
    if task.startswith("arith") or task == "physics":
        return [f"{i * 7 % 97} and {i * 13 % 89}" for i in range(n)]
    return [f"{WORDS[i % 10]} {WORDS[(i * 3 + 1) % 10]} number {i}" for i in range(n)]


SMALL = {
    "corpus": {"n": 36, "n_importance": 2, "n_heldout": 3, "n_heldout_task": 3, "max_chars": 120},
    "router": {"sweep_per_category": 4, "batch_size": 8, "k": 3},
    "validate": {"n_per_category": 3, "n_continuation": 4},
    "multiple_choice": {"benchmarks": ["arc_easy", "piqa"], "n_per_benchmark": 4},
    "throughput": {"batch_sizes": [1, 2], "generate_batch_sizes": [1, 2], "new_tokens": 3,
                   "warmup": 1, "repeats": 2, "generate_repeats": 1},
    "frontier": {"fractions": [0.0, 0.1], "n_per_category": 2, "timing_prompts": 3, "batch_sizes": [1, 2], "new_tokens": 3,
                 "warmup": 1, "repeats": 1, "oracle_fractions": [0.1]},
    "plan_map": {"n_per_category": 2, "k": 2, "fractions": [0.1]},
    "umap": {"n_neighbors": 5},
    "lossless": {"n_per_category": 1, "max_new_tokens": 8, "dtype": "float32", "lookup_sweep": [2, 8],
                 "drafters": ["routed_skip", "clasp", "prompt_lookup", "suffix"]},  # all, as the full-size run
    "datastore": {"n_per_category": 2, "max_new_tokens": 8},  # the strict mode: the CLI check is exact
    "depth": {"paragraphs": "gen/story", "n_per_operation": 2, "n_per_category": 1, "max_new_tokens": 4},
    "importance": {"n_continuation": 3, "method": "greedy", "greedy_layers": 2},
    "model": {"dtype": "float32"},
}


def run(cmd, cwd, env, stdout_only=False):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout if stdout_only else result.stdout + result.stderr


DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The small repo after one traced `dvc repro`, committed: (root, env, git, traces)."""
    root = tmp_path_factory.mktemp("pipeline") / "repo"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        outputs = name.startswith("reports/") and not name.startswith("reports/models/")  # other models' runs: inputs
        if (REPO / name).is_file() and not outputs and name != "dvc.lock":
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    archive = write_fake_bigbench(root.parent / "bb.tar.gz",
                                  {task: fake_inputs(task) for tasks in CATEGORIES.values() for task, _, _ in tasks})
    (root / "data/categories.yaml").write_text(yaml.safe_dump(
        {c: [{"task": t, "template": tpl, "heldout": h} for t, tpl, h in tasks] for c, tasks in CATEGORIES.items()}))
    checkpoint = root.parent / "tiny-model"
    tiny_llama(n_layers=6, hidden=64, seed=3).save_pretrained(checkpoint)
    tiny_tokenizer().save_pretrained(checkpoint)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in SMALL.items():
        params[section].update(values)
    params["corpus"]["archive"] = str(archive)
    params["model"]["source"] = str(checkpoint)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run(["git", "init", "-q"], root, env)
    run(git + ["add", "-A"], root, env)
    run(git + ["commit", "-qm", "small"], root, env)
    traces = root.parent / "traces"
    run(DVC + ["repro"], root, {**env, "AIS_TRACE": str(traces)})
    run(git + ["add", "-A"], root, env)
    run(git + ["commit", "-qm", "built"], root, env)
    return root, env, git, traces


def read_metrics(root: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted((root / "reports").glob("*.json"))}


def digest(path: Path) -> str:
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def reports_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): digest(p) for p in (root / "reports").rglob("*") if p.is_file()}


def test_every_stage_reports_what_it_measures(built):
    root, env, _, _ = built
    before = read_metrics(root)
    assert (root / "reports/README.md").read_text().startswith("# Results")
    assert (root / "data/map/index.faiss").is_file() and (root / "reports/umap.png").is_file()
    assert before["corpus.json"]["splits"]["map"]["n"] == 36
    mc = before["multiple_choice.json"]
    assert mc["mode"] == "hard" and mc["arc_easy"]["n"] == 4 and mc["piqa"]["split"] == "validation"
    for key in ("full_acc_norm", "routed_minus_full_acc_norm", "routed_minus_global_acc_norm", "random_minus_full_acc"):
        assert mc["piqa"][f"{key}_ci_low"] <= mc["piqa"][key] <= mc["piqa"][f"{key}_ci_high"], key
    assert "lm-evaluation-harness" in (root / "reports/README.md").read_text()
    for split in ("heldout", "heldout_task"):
        v = before["validate.json"][split]
        assert v["n_prompts"] == 3 * 3 and "oracle_top1" in v
        for key in ("routed_minus_global", "routed_minus_random", "routed_minus_oracle", "hard_minus_soft"):
            assert v[f"{key}_top1_ci_low"] <= v[f"{key}_top1"] <= v[f"{key}_top1_ci_high"], key
    prompts = (root / "reports/validate_prompts.csv").read_text().splitlines()
    assert len(prompts) == 1 + 2 * 9 and "routed_top1" in prompts[0] and "n_scored" in prompts[0]
    assert set(before["importance.json"]["split_half_spearman"]) == set(CATEGORIES)
    frontier = before["frontier.json"]
    assert {"heldout", "heldout_task"} <= set(frontier) and "b1_speedup" in frontier["heldout"]["category@1"]
    assert any(k.startswith("original_best_group@") for k in frontier["heldout"])
    for point in ("dynamic@1", "dynamic_calm@1", "stepwise_full@0", "global@1", "sublayer@1", "prompt_oracle@1",
                  "prompt_oracle_oos@1", "plan_map@1", "plan_map_learned@1"):
        assert point in frontier["heldout_task"], point
    assert "b2_speedup" in frontier["heldout"]["dynamic@1"] and frontier["dynamic_gates"]["dynamic"]["1"]["threshold"] > 0
    assert "b1_speedup" in frontier["heldout"]["sublayer@1"] and frontier["heldout"]["sublayer@1"]["cost"] <= 1.0
    assert "b1_speedup" not in frontier["heldout"]["random@1"]  # controls are not timed
    assert json.loads((root / "data/dynamic_gates.json").read_text())["1"]["threshold"] > 0
    ladder = (root / "reports/ladder.csv").read_text()
    assert "prompt_oracle,prompt_oracle_oos,late half" in ladder and "plan_map,global,all" in ladder
    plan_map = before["plan_map.json"]
    assert plan_map["entries"] == 2 * 3 and plan_map["budgets"] == [1] and len(plan_map["by_budget"]["1"]["sizes"]) <= 2
    assert "plan_map_top1" in before["validate.json"]["heldout"] and "plan_map_minus_full_acc" in mc["piqa"]
    reference = before["reference.json"]
    assert reference["by_kind"] == {"validate": 6, "frontier": 2, "importance": 3} and reference["bytes"] > 0
    depth = before["depth.json"]
    assert set(depth["operations"]) == {"copy", "summarise", "continue", "repeat", "sum", "product"}
    assert set(depth["categories"]) == set(CATEGORIES) and (root / "reports/depth.png").is_file()
    throughput = before["throughput.json"]
    assert set(throughput["generate"]) == {"B1", "B2"} and throughput["generate"]["B2"]["categories_in_batch"] == 2
    assert "routed_over_global" in throughput["generate"]["B2"] and throughput["mixed_batch_identical_share"] == 1.0
    lossless = before["lossless.json"]
    assert before["datastore.json"]["replies"] == 2 * 3 and lossless["lookup"] in (2, 8)
    assert "vs_prompt_lookup" in lossless["decoders"]["float32"]["suffix"] and set(lossless["by_split"]) == {
        "heldout", "heldout_task"}
    assert lossless["exactness"]["float32"]["identical_share"] == 1.0
    for dtype, e in lossless["exactness"].items():  # 3 + 3 test prompts (both splits): generate's prompt lookup, 5 drafters
        assert e["n_generations"] == 6 * (7 if dtype == lossless["system_dtype"] else 3)  # and the system; else the
        # loop with none, prompt lookup and suffix
    assert lossless["exactness"]["bfloat16"]["all_divergences_below_bound"]
    assert set(json.loads((root / "data/drafters.json").read_text())) == set(CATEGORIES)
    text = (root / "reports/README.md").read_text()
    assert "Per-token depth" in text and "Throughput of mixed traffic" in text
    assert "up to date" in run(DVC + ["status"], root, env)


def test_dvc_yaml_declares_exactly_the_params_each_stage_reads_and_the_files_it_opens(built):
    root, _, _, traces = built
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    seen = traced_stages(traces)
    problems = []
    for name, spec in stages.items():
        script = Path(spec["cmd"].split()[1]).stem
        assert script in seen, f"stage {name} left no trace"
        record = seen[script]
        keys, deps, outs = declared(spec)
        for effective, raw in EFFECTIVE.items():  # a conditional key is declared through its effective value
            if effective in keys:
                keys = (keys - {effective}) | (set(raw) & record["params"])
        if "*" not in keys and record["params"] != keys:
            problems.append(f"{name}: reads {sorted(record['params'] - keys)} undeclared, "
                            f"declares {sorted(keys - record['params'])} unread")
        outs = [o.replace("${item.shard}", "0") for o in outs]
        deps = [d.replace("${item.shard}", "0") for d in deps]
        unread = [p for p in record["read"] if not covered(p, deps + outs + ["params.yaml"])]
        unwritten = [p for p in record["written"] if not covered(p, outs)]
        if unread:
            problems.append(f"{name}: reads {unread}, neither a dep nor an out")
        if unwritten:
            problems.append(f"{name}: writes {unwritten}, not an out")
    assert not problems, "\n".join(problems)


THREAD_INVARIANT = ["data/corpus.jsonl", "data/embeddings.npz", "data/map", "reports/map.json", "reports/corpus.json"]
DETERMINISTIC = THREAD_INVARIANT + ["data/importance.npz", "reports/validate.json", "reports/validate_prompts.csv",
                                    "data/datastore"]


def test_deterministic_stages_give_identical_bytes_and_the_map_whatever_the_thread_count(built):
    """Rerun, every deterministic output has the same bytes; the corpus, the embeddings and the map also
    with one thread instead of two (torch's and the BLAS's). The importance and the evaluation scores are
    computed in float32 here, where MKL's matrix product and torch's CPU attention round by their thread
    split (docs/stack.md): they are compared at the same thread count."""
    root, env, _, _ = built
    before = {p: digest(root / p) for p in DETERMINISTIC}
    one = {**env, "AIS_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    for stage in ("corpus", "embed@0", "embed_merge", "map"):
        run(DVC + ["repro", "-f", "-s", stage], root, one)
    for stage in ("importance", "validate", "datastore"):
        run(DVC + ["repro", "-f", "-s", stage], root, env)
    assert {p: digest(root / p) for p in DETERMINISTIC} == before
    assert "up to date" in run(DVC + ["status"], root, env)


def test_cli_and_api_on_the_built_pipeline(built):
    root, env, _, _ = built
    ais = [str(Path(sys.executable).parent / "ais"), "--root", str(root)]
    info = json.loads(run(ais + ["info"], root, env, stdout_only=True))
    assert info["entries"] == 36 and set(info["categories"]) == set(CATEGORIES)
    pivot = info["model"]["pivot_layer"]
    for plan in info["plans"].values():  # only layers past the router's pivot may be skipped
        assert plan["may_skip"] and min(plan["may_skip"]) >= pivot and set(plan["skips"]) <= set(plan["may_skip"])
    routed = json.loads(run(ais + ["route", "What is 12 and 30?"], root, env, stdout_only=True))
    assert routed["category"] in CATEGORIES and len(routed["neighbours"]) == 3
    full = json.loads(run(ais + ["generate", "Write a short story about a river.", "--mode", "full",
                                 "--max-new-tokens", "12"], root, env, stdout_only=True))
    lossless = json.loads(run(ais + ["generate", "Write a short story about a river.", "--mode", "lossless",
                                     "--max-new-tokens", "12"], root, env, stdout_only=True))
    assert lossless["text"] == full["text"] and full["text"].strip()
    (root.parent / "prompts.txt").write_text("Write a short story about a river.\n\nWhat is 12 and 30?\nMultiply 7 and 8.\n")
    batch = json.loads(run(ais + ["generate", "--file", str(root.parent / "prompts.txt"), "--max-new-tokens", "12"],
                           root, env, stdout_only=True))
    assert len(batch) == 3 and all(g["batch_size"] == 3 for g in batch)
    dynamic = json.loads(run(ais + ["generate", "Multiply 7 and 8.", "--mode", "dynamic", "--max-new-tokens", "6"],
                             root, env, stdout_only=True))
    assert "per token" in dynamic["plan"] and dynamic["mode"] == "dynamic"
    bad = subprocess.run(ais + ["generate", "   "], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "prompt is empty" in bad.stderr
    missing = subprocess.run(ais[:1] + ["--root", str(root.parent), "route", "hi"], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "run `dvc repro` first" in missing.stderr

    from ais.api import generate, load

    system = load(root=root)
    hard = generate(system, "Multiply 7 and 8.", mode="hard", max_new_tokens=8)
    soft = generate(system, "Multiply 7 and 8.", mode="soft", max_new_tokens=8)
    assert hard.skipped_layers == soft.skipped_layers and len(hard.skipped_layers) == 1
    assert hard.category in CATEGORIES and hard.seconds > 0
    assert generate(system, "Multiply 7 and 8.", max_new_tokens=8).mode == system.decoder.settings.mode
    together = generate(system, ["Multiply 7 and 8.", "Write a short story about a river."], mode="hard", max_new_tokens=8)
    alone = [generate(system, p, mode="hard", max_new_tokens=8) for p in ("Multiply 7 and 8.",
                                                                          "Write a short story about a river.")]
    assert [g.text for g in together] == [g.text for g in alone]  # one batch, each row under its own plan
    # the router's layers run once per request: the decoder continues from them
    calls = []
    for idx, layer in enumerate(system.model.model.layers):
        layer.mlp.register_forward_hook(lambda m, a, o, idx=idx: calls.append((idx, a[0].shape[1])))
    generate(system, "Multiply 7 and 8.", mode="hard", max_new_tokens=1)
    assert [n for idx, n in calls if idx == 0] == [max(n for _, n in calls)], "layer 0 ran more than once on the prompt"


def test_an_interrupted_stage_leaves_its_previous_outputs(built):
    root, env, _, _ = built
    before = reports_digest(root)
    proc = subprocess.Popen(DVC + ["repro", "-f", "-s", "validate"], cwd=root, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    for line in proc.stderr:  # killed while it computes, after it has started its work
        if "validate heldout" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    assert reports_digest(root) == before
    assert "up to date" in run(DVC + ["status"], root, env)


def test_a_bad_value_stops_the_experiment_before_any_stage_and_loses_nothing(built):
    root, env, _, _ = built
    before = {**reports_digest(root), "data/model": digest(root / "data/model")}
    for setting, message in (("skip.alpha=1.5", "`skip.alpha` is 1.5; it must be < 1"),
                             ("model.source=/nonexistent", "model.source='/nonexistent' does not exist"),
                             ("validate.methods=[oracle,nothing]", "`validate.methods` names 'nothing'")):
        failed = subprocess.run(DVC + ["exp", "run", "-S", setting], cwd=root, env=env, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)
        assert failed.returncode != 0
        assert message in failed.stderr and "git show HEAD:params.yaml > params.yaml" in failed.stderr, failed.stderr
        assert {**reports_digest(root), "data/model": digest(root / "data/model")} == before, setting
        (root / "params.yaml").write_text(run(["git", "show", "HEAD:params.yaml"], root, env, stdout_only=True))
    assert "up to date" in run(DVC + ["status"], root, env)


def test_an_alpha_experiment_reruns_only_what_measures_soft_skipping(built):
    root, env, _, _ = built
    before = read_metrics(root)
    out = run(DVC + ["exp", "run", "-S", "skip.alpha=0.3"], root, env)
    after = read_metrics(root)
    for stage in ("embed@0", "embed_merge", "map", "importance", "reference", "lossless", "depth", "multiple_choice",
                  "throughput", "frontier"):  # in hard mode alpha is used by validate only
        assert f"'{stage}' didn't change, skipping" in out, stage
    for split in ("heldout", "heldout_task"):
        new, old = after["validate.json"][split], before["validate.json"][split]
        soft = [k for k in new if k.startswith("routed_soft") and k != "routed_soft_categories_passing"]
        assert any(new[k] != old[k] for k in soft), "soft-skip metrics did not move with alpha"
        for key, value in new.items():
            if not (key.startswith("routed_soft") or key.startswith("hard_minus_soft")):
                assert value == old[key], key
    for name in ("map.json", "importance.json", "corpus.json", "multiple_choice.json"):  # hard plans: alpha unused
        assert after[name] == before[name], name
    assert "routed_soft_kl" in run(DVC + ["metrics", "diff"], root, env)


def test_skip_mode_selects_what_every_single_mode_result_reports(built):
    root, env, _, _ = built
    hard = read_metrics(root)
    run(DVC + ["exp", "run", "-S", "skip.mode=soft"], root, env)
    soft_run = read_metrics(root)
    assert soft_run["validate.json"]["mode"] == "soft" and soft_run["throughput.json"]["mode"] == "soft"
    soft_v, hard_v = soft_run["validate.json"]["heldout"], hard["validate.json"]["heldout"]
    assert soft_v["routed_top1"] == hard_v["routed_soft_top1"] and soft_v["routed_hard_top1"] == hard_v["routed_top1"]
    assert soft_v["global_top1"] != hard_v["global_top1"]
    assert soft_v["hard_minus_soft_top1"] == hard_v["hard_minus_soft_top1"]
    assert soft_run["multiple_choice.json"]["mode"] == "soft"
    for name in ("arc_easy", "piqa"):
        assert soft_run["multiple_choice.json"][name]["full_acc"] == hard["multiple_choice.json"][name]["full_acc"]
    frontier = (root / "reports/frontier.csv").read_text().splitlines()
    mode_column = frontier[0].split(",").index("mode")
    assert {line.split(",")[mode_column] for line in frontier[1:]} == {"soft", "per-token"}  # dynamic: per token
    run(["git", "checkout", "--", "."], root, env)
    run(DVC + ["checkout", "--force"], root, env)


def test_queued_sweep_experiments_run_in_copies_and_show_their_own_metrics(built):
    root, env, git, _ = built
    for k in (2, 3):  # a cheap sweep: only the map's homogeneity metric reads it
        run(DVC + ["exp", "run", "--queue", "-n", f"hk{k}", "-S", f"map.homogeneity_k={k}"], root, env)
    run(DVC + ["queue", "start", "-j", "1"], root, env)
    deadline = time.time() + 900
    while time.time() < deadline:
        status = run(DVC + ["queue", "status"], root, env)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    run(DVC + ["queue", "stop"], root, env)
    shown = json.loads(run(DVC + ["exp", "show", "--json"], root, env, stdout_only=True))
    values = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                if rev.get("name") in ("hk2", "hk3") and rev.get("data"):
                    values[rev["name"]] = rev["data"]["metrics"]["reports/map.json"]["data"]["homogeneity_k"]
    assert values == {"hk2": 2, "hk3": 3}, status


def test_a_remote_shares_the_results_and_a_fresh_clone_recomputes_nothing(built, tmp_path):
    root, env, git, _ = built
    store = tmp_path / "store"
    run(DVC + ["remote", "add", "--local", "-d", "store", str(store)], root, env)
    run(DVC + ["push", "--run-cache"], root, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    run(DVC + ["remote", "add", "--local", "-d", "store", str(store)], clone, env)
    run(DVC + ["pull", "--run-cache"], clone, env)
    out = run(DVC + ["repro"], clone, env)
    assert "Running stage" not in out, out
    assert "up to date" in run(DVC + ["status"], clone, env)
