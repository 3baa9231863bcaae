"""The full model's references, computed once (stage `reference`) for every stage that scores against
them: each prompt group's greedy continuation and the full model's last-layer states at the scored
columns, from which the log-probabilities KL and top-1 need follow by the head alone (far smaller to
store than the log-probabilities: 576 numbers a position for SmolLM2-135M instead of 49,152).

Groups keep the batches the scoring stages score them in, so a stage that reads a group scores what
it scored when it computed the reference itself, bit for bit:
  validate/<split>/<category>   a category's validation prompts (forced protocol);
  frontier/<split>/<k>          the frontier's k-th batch of mixed categories (decode protocol);
  importance/<category>/<k>     the calibration prompts (the importance split), by length (both);
and the depth prompts' greedy continuations, to their end of sequence (`continuations.json`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ais.device import dtype_name
from ais.evaluation.quality import Reference, continuation, decode_states, forced_states, logprobs_of
from ais.files import ArtifactError, atomic_dir, load_npz, read_meta, save_npz, write_json

FILE = "data/reference"


def frontier_chunks(prompts_by_category: dict[str, list[str]], batch_size: int = 18) -> list[list[tuple]]:
    """The frontier's batches of one split: (category, index, prompt), categories mixed."""
    items = [(c, i, p) for c in sorted(prompts_by_category) for i, p in enumerate(prompts_by_category[c])]
    return [items[k:k + batch_size] for k in range(0, len(items), batch_size)]


def importance_chunks(prompts: list[str], chunk: int = 16) -> list[list[str]]:
    """A category's calibration prompts in batches of similar length (less padding)."""
    prompts = sorted(prompts, key=len)
    return [prompts[i:i + chunk] for i in range(0, len(prompts), chunk)]


@torch.inference_mode()
def build(engine, tokenizer, groups: dict[str, tuple[list[str], int, tuple[str, ...]]], progress: bool = True) -> dict:
    """{group: (Reference, {protocol: states})} for {group: (prompts, n_continuation, protocols)}."""
    out = {}
    for name, (prompts, n_continuation, protocols) in tqdm(groups.items(), desc="references", unit="group",
                                                           disable=not progress, mininterval=2.0):
        ref = continuation(engine, tokenizer, prompts, n_continuation)  # states only: no head
        states = {"forced": forced_states(engine, ref, None)}
        if "decode" in protocols:
            states["decode"] = decode_states(engine, ref, None)
        out[name] = (ref, states)
    return out


def save(folder: Path | str, built: dict, groups: dict, continuations: list[dict] | None, engine) -> dict:
    """Write every group as one npz (ids, mask, columns, scored, the full model's last-layer states per
    protocol in float32, which holds bfloat16 values exactly), the depth continuations and an index,
    atomically. Returns the index."""
    index = {}
    with atomic_dir(folder) as tmp:
        for k, (name, (ref, states)) in enumerate(sorted(built.items())):
            arrays = {"input_ids": ref.batch["input_ids"].cpu().numpy(),
                      "attention_mask": ref.batch["attention_mask"].cpu().numpy(),
                      "columns": np.array([ref.columns.start, ref.columns.stop]), "scored": ref.scored.cpu().numpy(),
                      "forced": states["forced"].float().cpu().numpy()}
            if "decode" in states:
                first, rest = states["decode"]
                arrays["decode_first"] = first.float().cpu().numpy()
                if rest is not None:
                    arrays["decode_rest"] = rest.float().cpu().numpy()
            save_npz(tmp / f"group-{k:03d}.npz", **arrays)
            index[name] = {"file": f"group-{k:03d}.npz", "prompts": groups[name][0], "protocols": sorted(states)}
        if continuations is not None:  # {kind, group, item, prompt_ids, continuation} per depth prompt
            write_json(tmp / "continuations.json", continuations)
        write_json(tmp / "index.json", {"dtype": dtype_name(engine.dtype), "groups": index})
    return index


class References:
    """The reference stage's output, read when asked: `get(group, protocol)` is a Reference whose
    `full_logprobs` are the full model's under that protocol."""

    def __init__(self, folder: Path | str, engine):
        self.folder, self.engine = Path(folder), engine
        meta = read_meta(self.folder / "index.json", "references", "reference")
        if meta["dtype"] != dtype_name(engine.dtype):
            raise ArtifactError(f"the references in {self.folder} were computed in {meta['dtype']}, the model runs in "
                             f"{dtype_name(engine.dtype)}; rerun `dvc repro reference`")
        self.groups = meta["groups"]

    def prompts(self, group: str) -> list[str]:
        return self.groups[group]["prompts"]

    def get(self, group: str, prompts: list[str], protocol: str = "forced") -> Reference:
        """The group's reference, checked to hold exactly `prompts` (the stage's own selection)."""
        entry = self.groups.get(group)
        if entry is None or entry["prompts"] != list(prompts):
            raise ValueError(f"the references hold {'other prompts for' if entry else 'no'} group {group!r}: "
                             "rerun `dvc repro reference` (its params differ from this stage's)")
        if protocol not in entry["protocols"]:
            raise ValueError(f"reference group {group!r} has no {protocol} states; rerun `dvc repro reference`")
        data = load_npz(self.folder / entry["file"], "a reference group", "reference")
        device, dtype = self.engine.device, self.engine.dtype
        tensor = (lambda key: torch.from_numpy(data[key]).to(device, dtype))
        if protocol == "forced":
            states = tensor("forced")
        else:
            states = (tensor("decode_first"), tensor("decode_rest") if "decode_rest" in data else None)
        batch = {"input_ids": torch.from_numpy(data["input_ids"]).to(device),
                 "attention_mask": torch.from_numpy(data["attention_mask"]).to(device)}
        start, stop = (int(v) for v in data["columns"])
        return Reference(batch, slice(start, stop), logprobs_of(self.engine, states, protocol),
                         torch.from_numpy(data["scored"]).to(device), self.engine, protocol)

    def continuations(self) -> list[dict]:
        """The depth prompts' {kind, group, item, prompt_ids, continuation}, in order."""
        return read_meta(self.folder / "continuations.json", "the depth continuations", "reference")
