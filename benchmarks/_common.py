"""Helpers shared by the benchmark scripts: the version/device report, peak memory, JSON output."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable

import torch

import mmscale
from mmscale._io import atomic_write_bytes


def versions(device: torch.device | str | None = None) -> dict:
    """Library versions and a description of the device the numbers come from."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = {
        "mmscale": mmscale.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["capability"] = list(torch.cuda.get_device_capability(device))
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    else:
        info["device"] = platform.processor() or platform.machine()
    return info


def peak_memory_mib(step: Callable[[], None], device: torch.device | str) -> float | None:
    """Peak CUDA memory one call of ``step`` allocates above what was live before (None on CPU)."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def write_json(path: str | os.PathLike | None, report: dict) -> None:
    """Write ``report`` to ``path`` atomically, creating its folder (nothing when ``path`` is None)."""
    if path:
        atomic_write_bytes(path, json.dumps(report, indent=2).encode())
