"""The greedy layer search (TALE, iterative ShortGPT): remove, one at a time, the candidate whose
removal, with those removed before, keeps the most top-1 agreement with the full model (ties: the
smaller KL, then the lower layer). Used by `importance.method: greedy` (on a category's calibration
prompts) and by the per-prompt oracle (on one prompt's own continuation)."""
from __future__ import annotations

from collections.abc import Callable


def greedy_removal(score: Callable[[list[list[int]]], list[dict]], candidates: list[int], steps: int,
                   removed: list[int] | None = None, on_step: Callable[[], None] | None = None) -> list[dict]:
    """Up to `steps` removals after `removed` (kept, not repeated): one dict per step {layer, top1, kl,
    losses: {candidate: 1 - top1 of removing it at that step}}. `score(sets)` gives {top1, kl} for each
    set of removed layers."""
    removed = list(removed or [])
    remaining = [c for c in candidates if c not in removed]
    out = []
    for _ in range(min(steps, len(remaining))):
        results = score([removed + [j] for j in remaining])
        best = min(range(len(remaining)), key=lambda j: (-results[j]["top1"], results[j]["kl"], remaining[j]))
        out.append({"layer": remaining[best], "top1": results[best]["top1"], "kl": results[best]["kl"],
                    "losses": {c: 1.0 - r["top1"] for c, r in zip(remaining, results)}})
        removed.append(remaining[best])
        remaining.pop(best)
        if on_step is not None:
            on_step()
    return out
