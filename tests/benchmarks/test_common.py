"""The benchmarks' machine report, spread statistics and peak-memory measurement."""

from __future__ import annotations

import sys

import pytest
import torch

from benchmarks._common import (
    cpu_info,
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
