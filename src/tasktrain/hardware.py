"""What the device can do and has used: peak FLOP/s of common GPUs, and peak memory.

Example:
    >>> peak_flops("NVIDIA H100 80GB HBM3", "bf16-mixed")
    989000000000000.0
    >>> peak_flops("cpu", "32-true") is None
    True
"""

from __future__ import annotations

import resource
import sys

import torch

# Dense (no sparsity) tensor-core peaks from the vendors' data sheets, FLOP/s. Matched by
# substring of ``torch.cuda.get_device_name()``, most specific first.
_PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "A10G": {"bf16": 70e12, "fp16": 70e12, "tf32": 35e12, "fp32": 31.2e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    "RTX 4090": {"bf16": 165e12, "fp16": 165e12, "tf32": 82.6e12, "fp32": 82.6e12},
    "RTX 3090": {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
    "T4": {"fp16": 65e12, "fp32": 8.1e12},
}
_DTYPES = {"bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16", "32-true": "fp32"}


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak dense FLOP/s of the GPU called ``device_name`` at ``precision`` (None: not in the table).

    ``"32-true"`` counts as TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is on.
    """
    dtype = _DTYPES.get(precision)
    if dtype == "fp32" and torch.backends.cuda.matmul.allow_tf32:
        dtype = "tf32"
    for model, peaks in _PEAKS.items():
        if model in device_name:
            return peaks.get(dtype) if dtype is not None else None
    return None


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` for a CUDA device, else the device type (``"cpu"``)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring peak memory afresh: the CUDA allocator's peak, or this process's peak RSS."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # elsewhere the peak counts from process start
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak_memory` in MiB: allocated on a CUDA device, RSS otherwise.

    No device sync: both are counters kept on the host.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def empty_cache(device: torch.device) -> bool:
    """Give the caching allocator's unused blocks back to the device; False when it has none (CPU).

    Example:
        >>> empty_cache(torch.device("cpu"))
        False
    """
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.xpu, torch.mps, ...
    release = getattr(backend, "empty_cache", None) if device.type != "cpu" else None
    if release is None:
        return False
    release()
    return True
