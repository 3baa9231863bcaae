"""The greedy layer search (TALE, iterative ShortGPT): remove, one at a time, the candidate whose
removal, with those removed before, keeps the most top-1 agreement with the full model (ties: the
smaller KL, then the lower layer). Used by `importance.method: greedy` (on a category's calibration
prompts), by the per-prompt oracles (on each prompt's own continuation) and by the plan map (on map
prompts); several searches (rows) advance together, so that one scoring pass serves them all."""
from __future__ import annotations

from collections.abc import Callable


def greedy_removal(score: Callable[[list[list[int]]], list[dict]], candidates: list[int], steps: int,
                   removed: list[int] | None = None, on_step: Callable[[], None] | None = None) -> list[dict]:
    """One search: up to `steps` removals after `removed` (kept, not repeated): one dict per step {layer,
    top1, kl, losses: {candidate: 1 - top1 of removing it at that step}}. `score(sets)` gives {top1, kl}
    for each set of removed layers."""
    found = greedy_removals(lambda rows: [score(rows[0])], candidates, steps, [list(removed or [])], on_step)
    return found[0]


def greedy_removals(score: Callable[[list[list[list[int]]]], list[list[dict]]], candidates: list[int], steps: int,
                    removed: list[list[int]], on_step: Callable[[], None] | None = None) -> list[list[dict]]:
    """Several searches at once, one per row (each starting from its own `removed`): per row, the steps
    as `greedy_removal` gives them. `score(sets per row)` gives {top1, kl} for each row's each set."""
    removed = [list(r) for r in removed]
    remaining = [[c for c in candidates if c not in r] for r in removed]
    out: list[list[dict]] = [[] for _ in removed]
    for _ in range(steps):
        active = [i for i, rest in enumerate(remaining) if rest]
        if not active:
            break
        results = score([[removed[i] + [j] for j in remaining[i]] for i in active])
        for i, row in zip(active, results):
            rest = remaining[i]
            best = min(range(len(rest)), key=lambda j: (-row[j]["top1"], row[j]["kl"], rest[j]))
            out[i].append({"layer": rest[best], "top1": row[best]["top1"], "kl": row[best]["kl"],
                           "losses": {c: 1.0 - r["top1"] for c, r in zip(rest, row)}})
            removed[i].append(rest[best])
            rest.pop(best)
        if on_step is not None:
            on_step()
    return out
