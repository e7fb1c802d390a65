"""attention_speed's per-round ratios, their spread and warnings."""

from __future__ import annotations

from benchmarks.attention_speed import summarize_row


def test_ratios_are_medians_of_per_round_ratios_with_their_spread():
    times = {"naive": [100.0, 300.0, 110.0, 120.0], "torch": [50.0, 150.0, 55.0, 60.0]}
    row = summarize_row(times)
    assert row["ms"]["naive"] == 115.0
    assert row["speedup_vs_naive"]["torch"] == 2.0
    assert row["speedup_vs_naive_iqr"]["torch"] == [2.0, 2.0]
    assert row["warnings"] == []
    assert row["speedup_vs_compile"] == {}


def test_a_noisy_ratio_is_flagged():
    row = summarize_row({"naive": [100.0, 100.0, 100.0], "torch": [20.0, 50.0, 90.0]})
    assert len(row["warnings"]) == 1 and "torch vs naive" in row["warnings"][0]
