"""The calibration every method may use, built once per stage and only if a method asks for it:
the full model's continuations of the calibration prompts (the `importance` split, never
evaluated), a scorer of plans on them, and the engine's measured block costs."""
from __future__ import annotations

import numpy as np

from ais.evaluation.anatomy import block_costs
from ais.evaluation.quality import make_reference, score_conditions
from ais.evaluation.references import importance_chunks
from ais.methods import Method, make
from ais.methods.base import Calibration


def needs_calibration(method: Method) -> bool:
    return type(method).calibrate is not Method.calibrate


def calibration_references(engine, tokenizer, prompts_by_category: dict[str, list[str]], n_continuation: int,
                           protocol: str, references=None) -> list:
    """The full model's references of the calibration prompts (the reference stage's `importance`
    groups where given, else computed here in the same batches), scored by `protocol`."""
    out = []
    for category, prompts in sorted(prompts_by_category.items()):
        for k, chunk in enumerate(importance_chunks(prompts)):
            if references is not None:
                out.append(references.get(f"importance/{category}/{k}", chunk, protocol))
            else:
                out.append(make_reference(engine, tokenizer, chunk, n_continuation, protocol))
    return out


def build_calibration(decoder, tokenizer, prompts_by_category: dict[str, list[str]], n_continuation: int,
                      protocol: str = "decode", costs: dict[str, float] | None = None, references=None) -> Calibration:
    """References of every calibration prompt, `score(plans)` (each plan's mean top-1 agreement and KL
    over all of them, by `protocol`, every plan in one shared pass per batch) and the decode cost of
    every block."""
    engine = decoder.engine
    refs = calibration_references(engine, tokenizer, prompts_by_category, n_continuation, protocol, references)

    def score_plans(plans):
        per_ref = [score_conditions(engine, ref, {i: [p] * len(ref) for i, p in enumerate(plans)}, protocol)
                   for ref in refs]
        return [{k: float(np.mean(np.concatenate([r[i][k] for r in per_ref]))) for k in ("top1", "kl")}
                for i in range(len(plans))]

    first = next(p for ps in prompts_by_category.values() for p in ps)
    return Calibration(engine, tokenizer, prompts_by_category, refs, score_plans,
                       costs if costs is not None else block_costs(engine, tokenizer, first))


def calibrated(decoder, tokenizer, names: list[str], prompts_by_category: dict[str, list[str]] | None,
               n_continuation: int, protocol: str = "decode", costs: dict[str, float] | None = None,
               references=None) -> dict[str, Method]:
    """{name: method} for the named methods on the decoder's setup, those that calibrate calibrated on
    the calibration prompts (built once, only if one of them needs it; `costs`: the block costs the
    caller measured, so that every plan is costed by the same table)."""
    methods = {name: make(name, decoder.setup) for name in names}
    wanting = [m for m in methods.values() if needs_calibration(m)]
    if wanting:
        if not prompts_by_category:
            raise ValueError(f"methods {[m.name for m in wanting]} calibrate, but no calibration prompts were given")
        calibration = build_calibration(decoder, tokenizer, prompts_by_category, n_continuation, protocol, costs,
                                        references)
        for method in wanting:
            method.calibrate(calibration)
    return methods


def available_methods(decoder, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the named methods that can run on the decoder's setup, {left-out method: why})."""
    kept, left = [], {}
    for name in names:
        reason = make(name, decoder.setup).unavailable()
        if reason:
            left[name] = reason
        else:
            kept.append(name)
    return kept, left
