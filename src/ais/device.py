"""Device and dtype choice, and the project's one clock: the device synchronised before every
reading, warm-up, interleaved repeats in a fresh random order, medians with spread (used by decoding,
which times its own generations, by the router's cost and by the benchmarks)."""
from __future__ import annotations

import os
import platform
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class DeviceError(ValueError):
    """A device or dtype setting that cannot be used."""


def pick_device(device: str = "auto") -> torch.device:
    """`auto` picks Apple MPS, then CUDA, then CPU; anything else is taken as given."""
    if device != "auto":
        if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
            raise DeviceError(f"model.device={device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return torch.device(device)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@lru_cache(maxsize=1)
def cpu_has_native_bfloat16() -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (x86 AVX-512 BF16 or AMX, Arm BF16).
    Without it torch emulates bfloat16: on a 2-core AVX2-only EPYC a 16x100-token prefill ran
    at 82 tok/s in bfloat16 and 581 tok/s in float32 (greedy decoding: 17.8 vs 12.0 tok/s)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = set(cpuinfo.read_text(errors="ignore").split())
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA and on CPUs that compute it natively (decoding is memory-bound:
    half the bytes, ~2x tok/s on such a 2-core CPU, measured), float32 on other CPUs (bfloat16 is
    emulated there and prefill is ~7x slower), float16 on MPS; names map to torch dtypes."""
    if dtype == "auto":
        if device.type == "mps":
            return torch.float16
        if device.type == "cpu" and not cpu_has_native_bfloat16():
            return torch.float32
        return torch.bfloat16
    if dtype not in DTYPES:
        raise DeviceError(f"model.dtype={dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """The params name of a torch dtype (torch.bfloat16 -> 'bfloat16')."""
    return str(dtype).replace("torch.", "")


def synchronize(device: torch.device) -> None:
    """Wait until the device has finished its queued work (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def configure_threads() -> int:
    """Honour `AIS_THREADS` (torch's intra-op threads): `dvc queue start -j N` runs N experiments at
    once, each of which would otherwise take every core; AIS_THREADS = cores / N keeps them from
    oversubscribing the CPU. Returns the thread count in use."""
    value = os.environ.get("AIS_THREADS")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise DeviceError(f"AIS_THREADS={value!r} must be a positive integer (torch threads per process)")
        torch.set_num_threads(int(value))
    return torch.get_num_threads()


class Stopwatch:
    """`with Stopwatch(device) as clock: ...` then `clock.seconds`: wall time with the device idle at
    both ends (the host waits for queued device work before each reading)."""

    def __init__(self, device):
        self.device, self.seconds = device, 0.0

    def __enter__(self):
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start


WARMUP_TOKENS = 4  # tokens a warm-up generation decodes: every code path and shape of a decode step, less work


def time_interleaved(calls: dict, device, warmup: int, repeats: int, seed: int = 0, warm: dict | None = None,
                     baseline=None, target_iqr: float | None = None, min_repeats: int = 2) -> dict[str, np.ndarray]:
    """Seconds per call for each named zero-argument callable; every repeat runs each once, in a
    seeded random order, so that drift and order effects hit all alike. The `warmup` untimed rounds
    run `warm` (the same code paths on less work, e.g. fewer tokens; default: the calls). With
    `baseline` and `target_iqr`, the repeats stop once there are `min_repeats` and every call's
    per-repeat ratio baseline/call has an interquartile range of at most `target_iqr` (repeats set
    by the interval they must reach; at most `repeats`). Every call is timed in every round."""
    rng = np.random.default_rng(seed)
    names = list(calls)
    for _ in range(warmup):
        for fn in (warm or calls).values():
            fn()
    times = {name: [] for name in calls}
    for r in range(repeats):
        for i in rng.permutation(len(names)):
            with Stopwatch(device) as clock:
                calls[names[i]]()
            times[names[i]].append(clock.seconds)
        if target_iqr is not None and r + 1 >= min_repeats and all(
                iqr(np.array(times[baseline]) / np.array(t)) <= target_iqr for name, t in times.items() if name != baseline):
            break
    return {name: np.array(t) for name, t in times.items()}


def iqr(values: np.ndarray) -> float:
    """The interquartile range (q3 - q1) of some values: what a repeat rule reads of per-repeat speedups."""
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 - q1)


def summary(seconds: np.ndarray) -> dict:
    """Median and interquartile range of repeated timings."""
    q1, med, q3 = np.percentile(seconds, [25, 50, 75])
    return {"median_s": float(med), "iqr_s": float(q3 - q1)}


def speedup(baseline: np.ndarray, variant: np.ndarray) -> dict:
    """Per-repeat speedup baseline/variant (repeats are paired: interleaved in one round), as the
    median and its interquartile range; `within_noise` when that range contains 1."""
    ratios = np.asarray(baseline) / np.asarray(variant)
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    return {"speedup": float(med), "speedup_q1": float(q1), "speedup_q3": float(q3), "within_noise": bool(q1 <= 1 <= q3)}
