"""Device and dtype choice, and the device synchronisation every clock read needs
(used by decoding, which times its own generations, and by the benchmarks)."""
from __future__ import annotations

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


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CPU and CUDA (decoding is memory-bound: half the bytes, ~2x tok/s
    on the 2-core CPU, measured), float16 on MPS; names map to torch dtypes."""
    if dtype == "auto":
        return torch.float16 if device.type == "mps" else torch.bfloat16
    if dtype not in DTYPES:
        raise DeviceError(f"model.dtype={dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def synchronize(device: torch.device) -> None:
    """Wait until the device has finished its queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
