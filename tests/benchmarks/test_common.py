"""The benchmarks' machine report, spread statistics and peak-memory measurement."""

from __future__ import annotations

import sys

import pytest
import torch

from benchmarks._common import (
    allocator_hint,
    allocator_info,
    cpu_info,
    describe_allocator,
    describe_cpu,
    peak_rss_mib,
    ratio_stats,
    spread_warning,
    summarize,
    vector_isa,
)

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse4_2 avx fma avx2 bmi2
"""


@pytest.mark.parametrize("flags, isa", [
    (["sse4_2", "avx", "avx2", "avx512f", "avx512bw"], "AVX-512"),
    (["sse4_2", "avx", "avx2", "fma"], "AVX2"),
    (["sse4_2", "avx"], "AVX"),
    (["sse4_2"], "SSE4.2"),
    ([], "unknown"),
])
def test_vector_isa_names_the_widest_set(flags, isa):
    assert vector_isa(flags) == isa


def test_cpu_info_reads_model_family_and_isa():
    info = cpu_info(CPUINFO)
    assert (info["model"], info["vendor"], info["family"], info["isa"]) == (
        "AMD EPYC 7B13", "AuthenticAMD", "25", "AVX2")
    assert info["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    line = describe_cpu(info)
    assert "AMD EPYC 7B13" in line and "ISA AVX2" in line and "family 25" in line


def test_cpu_info_without_flags_says_unknown():
    assert cpu_info("model name\t: Some CPU\n")["isa"] == "unknown"


def test_allocator_info_reads_the_environment_and_the_kernel_setting(tmp_path):
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    default = allocator_info({"PATH": "/bin"}, str(mode))
    assert default == {"thp_mem_alloc_enable": False, "preloaded_malloc": None, "malloc_env": {},
                       "thp_mode": "madvise"}
    line = describe_allocator(default)
    assert "system malloc" in line and "THP_MEM_ALLOC_ENABLE unset" in line and "madvise" in line
    assert "THP_MEM_ALLOC_ENABLE=1" in allocator_hint(default)

    thp = allocator_info({"THP_MEM_ALLOC_ENABLE": "1"}, str(tmp_path / "missing"))
    assert thp["thp_mem_alloc_enable"] and thp["thp_mode"] is None
    assert "THP_MEM_ALLOC_ENABLE=1" in describe_allocator(thp) and allocator_hint(thp) is None
    for value, enabled in (("0", False), ("", False), ("yes", False), (" 2", True), ("1x", True)):
        assert allocator_info({"THP_MEM_ALLOC_ENABLE": value}, str(mode))["thp_mem_alloc_enable"] is enabled, value

    je = allocator_info({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                         "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "65536"}, str(mode))
    assert je["preloaded_malloc"] == "jemalloc" and je["malloc_env"] == {"MALLOC_MMAP_THRESHOLD_": "65536"}
    assert describe_allocator(je).startswith("allocator: jemalloc, MALLOC_MMAP_THRESHOLD_=65536")
    assert allocator_hint(je) is None


def test_summarize_median_and_interquartile_range():
    stats = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert stats["median"] == 3.0
    assert (stats["q1"], stats["q3"]) == (2.0, 4.0)
    assert stats["rel_iqr"] == pytest.approx(2.0 / 3.0)
    assert summarize([5.0])["iqr"] == 0.0
    with pytest.raises(ValueError, match="values"):
        summarize([])


def test_ratio_stats_pairs_rounds():
    # the baseline slows down with the machine in round 2; the per-round ratio does not
    stats = ratio_stats([10.0, 40.0, 12.0], [5.0, 20.0, 6.0])
    assert stats["median"] == 2.0 and stats["iqr"] == 0.0
    with pytest.raises(ValueError, match="rounds"):
        ratio_stats([1.0, 2.0], [1.0])


def test_spread_warning_only_above_the_limit():
    assert spread_warning("torch vs naive", summarize([2.0, 2.05, 2.1])) is None
    msg = spread_warning("torch vs naive", summarize([1.0, 2.0, 4.0]))
    assert msg is not None and "torch vs naive" in msg and "WARNING" in msg


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_peak_rss_counts_a_freed_allocation():
    def step():
        torch.ones(16 * 2**20)  # 64 MiB, touched, then freed

    peak = peak_rss_mib(step)
    if peak is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    # the kernel's counters also see other threads and memory reclaim in a long test
    # process: the best of three readings
    assert max(peak, *(peak_rss_mib(step) for _ in range(2))) >= 60
    assert min(peak_rss_mib(lambda: None) for _ in range(3)) < 16
