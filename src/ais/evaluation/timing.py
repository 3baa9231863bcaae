"""Timing, done properly: warm-up, many repeats, medians with spread, the device synchronised
before every clock read, and the variants of one comparison interleaved in a fresh random order
each repeat, so drift and order effects hit all alike."""
from __future__ import annotations

import time

import numpy as np

from ais.device import synchronize


def time_interleaved(calls: dict, device, warmup: int, repeats: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seconds per call for each named zero-argument callable; every repeat runs each once, in a
    seeded random order."""
    rng = np.random.default_rng(seed)
    names = list(calls)
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for i in rng.permutation(len(names)):
            synchronize(device)
            start = time.perf_counter()
            calls[names[i]]()
            synchronize(device)
            times[names[i]].append(time.perf_counter() - start)
    return {name: np.array(t) for name, t in times.items()}


def summary(seconds: np.ndarray) -> dict:
    q1, med, q3 = np.percentile(seconds, [25, 50, 75])
    return {"median_s": float(med), "iqr_s": float(q3 - q1)}


def speedup(baseline: np.ndarray, variant: np.ndarray) -> dict:
    """Per-repeat speedup baseline/variant (repeats are paired: interleaved in one round), as the
    median and its interquartile range; `within_noise` when that range contains 1."""
    ratios = np.asarray(baseline) / np.asarray(variant)
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    return {"speedup": float(med), "speedup_q1": float(q1), "speedup_q3": float(q3), "within_noise": bool(q1 <= 1 <= q3)}
