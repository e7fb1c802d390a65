"""Helpers shared by the benchmark scripts: the machine report, spread, peak memory, JSON output."""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import mmscale
from mmscale._io import atomic_write_bytes

# a ratio whose interquartile range exceeds this fraction of its median is flagged as noisy
SPREAD_WARN = 0.10

# environment for a child process whose resident set should follow its live tensors:
# glibc then returns every freed block of 64 KiB or more to the system at once
TRACKING_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def vector_isa(flags: Sequence[str]) -> str:
    """The widest x86 vector instruction set in a ``/proc/cpuinfo`` flag list.

    Args:
        flags (Sequence[str]): the CPU's flags, e.g. ``["sse4_2", "avx", "avx2", "fma"]``.

    Returns:
        str: ``"AVX-512"``, ``"AVX2"``, ``"AVX"``, ``"SSE4.2"`` or ``"unknown"``.
    """
    flags = set(flags)
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2")):
        if flag in flags:
            return name
    return "unknown"


def cpu_info(cpuinfo: str | None = None) -> dict:
    """The CPU the numbers come from: model, vector ISA and what PyTorch dispatches to.

    Args:
        cpuinfo (str | None): the text of ``/proc/cpuinfo`` (read when None; other
            systems report what :mod:`platform` knows).

    Returns:
        dict: ``model``, ``vendor``, ``family``, ``isa`` (from the flags),
        ``torch_capability`` (``torch.backends.cpu.get_cpu_capability()``, the kernels
        ATen actually runs), ``logical_cpus`` and ``load_average`` (1 minute; None
        where unknown).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""

    def field(name: str) -> str | None:
        match = re.search(rf"^{name}\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
        return match.group(1).strip() if match else None

    flags = (field("flags") or "").split()
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {
        "model": field("model name") or platform.processor() or platform.machine(),
        "vendor": field("vendor_id"),
        "family": field("cpu family"),
        "isa": vector_isa(flags) if flags else "unknown",
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "load_average": load,
    }


def describe_cpu(info: dict) -> str:
    """One header line for a :func:`cpu_info` dict.

    Args:
        info (dict): as returned by :func:`cpu_info`.

    Returns:
        str: e.g. ``"CPU AMD EPYC (family 25), ISA AVX2 (torch kernels AVX2), 2 logical CPUs, load 0.4"``.
    """
    family = f" (family {info['family']})" if info.get("family") else ""
    load = f", load {info['load_average']}" if info.get("load_average") is not None else ""
    return (f"CPU {info['model']}{family}, ISA {info['isa']} (torch kernels {info['torch_capability']}), "
            f"{info['logical_cpus']} logical CPUs{load}")


def _c_atoi(text: str) -> int:
    """C's ``atoi``: the leading integer of ``text`` (0 when there is none), as PyTorch reads its switch."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def allocator_info(environ: dict | None = None, thp_mode_file: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> dict:
    """How large CPU tensors get their memory: it moves CPU timings more than most kernels do.

    With glibc's malloc, every block above its mmap threshold (at most 32 MiB) is a
    fresh memory mapping whose pages fault in one by one on first touch; a composition
    that allocates a fresh tensor per step pays that once per step. PyTorch's
    ``THP_MEM_ALLOC_ENABLE=1`` (2 MiB transparent huge pages for tensors of 2 MiB or
    more) or a caching malloc (jemalloc, tcmalloc through ``LD_PRELOAD``) removes most
    of it, for every composition alike.

    Args:
        environ (dict | None): the environment to read (``os.environ`` when None).
        thp_mode_file (str): the kernel's transparent-huge-page setting.

    Returns:
        dict: ``thp_mem_alloc_enable`` (bool: PyTorch's variable read as a non-zero
        integer, the way PyTorch reads it: ``"1"`` yes, ``"yes"`` no), ``preloaded_malloc`` (``"jemalloc"``, ``"tcmalloc"``, ``"mimalloc"``
        or None), ``malloc_env`` (glibc's ``MALLOC_*`` tunables that are set) and
        ``thp_mode`` (``"always"``, ``"madvise"``, ``"never"`` or None where unknown).
    """
    env = os.environ if environ is None else environ
    preload = env.get("LD_PRELOAD", "")
    preloaded = next((name for name in ("jemalloc", "tcmalloc", "mimalloc") if name in preload), None)
    try:
        match = re.search(r"\[(\w+)\]", Path(thp_mode_file).read_text(encoding="utf-8"))
        thp_mode = match.group(1) if match else None
    except OSError:
        thp_mode = None
    return {
        "thp_mem_alloc_enable": _c_atoi(env.get("THP_MEM_ALLOC_ENABLE", "")) != 0,
        "preloaded_malloc": preloaded,
        "malloc_env": {k: v for k, v in sorted(env.items()) if k.startswith("MALLOC_") and k.endswith("_")},
        "thp_mode": thp_mode,
    }


def describe_allocator(info: dict) -> str:
    """One header line for an :func:`allocator_info` dict.

    Args:
        info (dict): as returned by :func:`allocator_info`.

    Returns:
        str: e.g. ``"allocator: system malloc, THP_MEM_ALLOC_ENABLE unset (kernel THP: madvise)"``.
    """
    malloc = info.get("preloaded_malloc") or "system malloc"
    tunables = "".join(f", {k}={v}" for k, v in info.get("malloc_env", {}).items())
    thp = "THP_MEM_ALLOC_ENABLE=1" if info.get("thp_mem_alloc_enable") else "THP_MEM_ALLOC_ENABLE unset"
    mode = f" (kernel THP: {info['thp_mode']})" if info.get("thp_mode") else ""
    return f"allocator: {malloc}{tunables}, {thp}{mode}"


def allocator_hint(info: dict) -> str | None:
    """A note for CPU runs on the default allocator (None when a faster one is in use).

    Args:
        info (dict): as returned by :func:`allocator_info`.

    Returns:
        str | None: the note, or None.
    """
    if info.get("thp_mem_alloc_enable") or info.get("preloaded_malloc") or info.get("malloc_env"):
        return None
    return ("  note: large tensors are fresh memory mappings here; first-touch page faults weigh on "
            "compositions that allocate more (the naive one most). THP_MEM_ALLOC_ENABLE=1 "
            "changes absolute times and ratios (see docs/benchmarks.md)")


def print_machine(info: dict, device: torch.device) -> None:
    """Print the CPU line, the allocator line and, on CPU with the default allocator, its note.

    Args:
        info (dict): as returned by :func:`versions`.
        device (torch.device): where the timed work runs.
    """
    hint = allocator_hint(info["allocator"]) if device.type == "cpu" else None
    lines = [describe_cpu(info["cpu"]), describe_allocator(info["allocator"]), *([hint] if hint else [])]
    print("\n".join(lines), flush=True)


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
    info["cpu"] = cpu_info()
    info["allocator"] = allocator_info()
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["capability"] = list(torch.cuda.get_device_capability(device))
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    else:
        info["device"] = f"{info['cpu']['model']} ({info['cpu']['isa']})"
    return info


def summarize(values: Sequence[float]) -> dict:
    """Median and interquartile range of repeated measurements.

    Args:
        values (Sequence[float]): one value per round (at least one).

    Returns:
        dict: ``median``, ``q1``, ``q3``, ``iqr`` and ``rel_iqr`` (``iqr / median``),
        plus ``n``. With fewer than 2 values the quartiles equal the median.

    Raises:
        ValueError: if ``values`` is empty.
    """
    if not values:
        raise ValueError("summarize: values is empty; time at least one round")
    med = statistics.median(values)
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = med
    return {"median": med, "q1": q1, "q3": q3, "iqr": q3 - q1,
            "rel_iqr": (q3 - q1) / med if med else float("inf"), "n": len(values)}


def ratio_stats(baseline: Sequence[float], candidate: Sequence[float]) -> dict:
    """Speed-up of ``candidate`` over ``baseline`` per interleaved round, summarised.

    Round ``i`` of both lists was timed back to back, so ``baseline[i] / candidate[i]``
    sees the same machine load; the median and spread of these per-round ratios are
    what to quote on a shared machine.

    Args:
        baseline (Sequence[float]): times of the baseline, one per round.
        candidate (Sequence[float]): times of the candidate, same rounds.

    Returns:
        dict: :func:`summarize` of the per-round ratios.

    Raises:
        ValueError: if the two lists differ in length or are empty.
    """
    if len(baseline) != len(candidate):
        raise ValueError(f"ratio_stats: baseline has {len(baseline)} rounds, candidate {len(candidate)}")
    return summarize([b / c for b, c in zip(baseline, candidate, strict=True)])


def spread_warning(label: str, stats: dict, limit: float = SPREAD_WARN) -> str | None:
    """A warning line when a summary's interquartile range is large against its median.

    Args:
        label (str): what was measured, for the message.
        stats (dict): a :func:`summarize` result.
        limit (float): the largest ``iqr / median`` that passes quietly.

    Returns:
        str | None: the warning, or None when the spread is within ``limit``.
    """
    if stats["rel_iqr"] <= limit:
        return None
    return (f"WARNING: {label}: interquartile range {stats['iqr']:.3g} is {stats['rel_iqr']:.0%} of the median "
            f"{stats['median']:.3g} (> {limit:.0%}); the machine was busy or the rounds too few, "
            "rerun on a quiet machine or with more --rounds")


def _status_kib(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def peak_rss_mib(step: Callable[[], None]) -> float | None:
    """Growth of the process's peak resident set during one call of ``step`` (Linux).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``), then returns
    ``VmHWM`` after the call minus ``VmRSS`` before it. This counts every byte the
    step touched that was not resident before, so it is only the step's peak memory
    when freed memory leaves the process: run it in a child started with
    :data:`TRACKING_MALLOC_ENV` (memory the allocator keeps from earlier steps is
    otherwise reused and not counted).

    Args:
        step (Callable[[], None]): the work to measure.

    Returns:
        float | None: MiB, or None where the counters are unavailable (not Linux).
    """
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status_kib("VmRSS")
    step()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return (peak - before) / 1024


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
