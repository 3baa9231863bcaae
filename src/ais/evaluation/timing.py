"""Timing, done properly: warm-up, many repeats, medians with spread, the device synchronised
before every clock read, and the variants of one comparison interleaved so drift hits all alike."""
from __future__ import annotations

import time

import numpy as np

from ais.device import synchronize


def time_interleaved(calls: dict, device, warmup: int, repeats: int) -> dict[str, np.ndarray]:
    """Seconds per call for each named zero-argument callable, alternating between them."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: np.array(t) for name, t in times.items()}


def summary(seconds: np.ndarray) -> dict:
    q1, med, q3 = np.percentile(seconds, [25, 50, 75])
    return {"median_s": float(med), "iqr_s": float(q3 - q1)}
