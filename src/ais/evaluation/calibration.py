"""The calibration every method may use, built once per stage and only if a method asks for it:
the full model's continuations of the calibration prompts (the `importance` split, never
evaluated), a scorer of plans on them, and the engine's measured block costs."""
from __future__ import annotations

import numpy as np

from ais.evaluation.anatomy import block_costs
from ais.evaluation.quality import make_reference, score
from ais.methods import Method, make
from ais.methods.base import Calibration


def needs_calibration(method: Method) -> bool:
    return type(method).calibrate is not Method.calibrate


def build_calibration(decoder, tokenizer, prompts_by_category: dict[str, list[str]], n_continuation: int,
                      protocol: str = "decode", costs: dict[str, float] | None = None) -> Calibration:
    """References of every calibration prompt (one batch per category), `score(plans)` (each plan's mean
    top-1 agreement and KL over all of them, by `protocol`) and the decode cost of every block."""
    engine = decoder.engine
    references = [make_reference(engine, tokenizer, prompts, n_continuation)
                  for _, prompts in sorted(prompts_by_category.items())]

    def score_plans(plans):
        out = []
        for plan in plans:
            per_row = [score(engine, ref, [plan] * len(ref), protocol) for ref in references]
            out.append({k: float(np.mean(np.concatenate([r[k] for r in per_row]))) for k in ("top1", "kl")})
        return out

    first = next(p for ps in prompts_by_category.values() for p in ps)
    return Calibration(engine, tokenizer, prompts_by_category, references, score_plans,
                       costs if costs is not None else block_costs(engine, tokenizer, first))


def calibrated(decoder, tokenizer, names: list[str], prompts_by_category: dict[str, list[str]] | None,
               n_continuation: int, protocol: str = "decode", costs: dict[str, float] | None = None) -> dict[str, Method]:
    """{name: method} for the named methods on the decoder's setup, those that calibrate calibrated on
    the calibration prompts (built once, only if one of them needs it; `costs`: the block costs the
    caller measured, so that every plan is costed by the same table)."""
    methods = {name: make(name, decoder.setup) for name in names}
    wanting = [m for m in methods.values() if needs_calibration(m)]
    if wanting:
        if not prompts_by_category:
            raise ValueError(f"methods {[m.name for m in wanting]} calibrate, but no calibration prompts were given")
        calibration = build_calibration(decoder, tokenizer, prompts_by_category, n_continuation, protocol, costs)
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
