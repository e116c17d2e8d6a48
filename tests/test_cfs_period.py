"""benchmarks/cfs_period.py's analysis: a slower CPU against a paused one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from cfs_period import analyse, closest_to_a_slower_cpu, percentile, report


def test_a_perfectly_slower_cpu_scores_zero() -> None:
    # 0.2 of a core, 10 ms uncapped: 50 ms every time, each op 10 ms of CPU.
    a = analyse([50.0] * 20, 10.0, 0.2, [10.0] * 20)
    assert a["expected_ms"] == 50.0 and a["ratio_median"] == 1.0
    assert a["mean_abs_log"] == 0.0 and a["own_mean_abs_log"] == 0.0
    assert a["burst_fraction"] == a["paused_fraction"] == 0.0
    assert a["throughput_share"] == pytest.approx(0.2)
    assert a["got_over_share"] == pytest.approx(1.0)


def test_a_paused_cpu_is_bimodal() -> None:
    # 100 ms periods at 0.2 of a core, 10 ms ops: two ops run at full speed inside the
    # 20 ms quota, the next waits out the 80 ms pause. Same throughput, bad latency.
    lat = [10.0, 10.0, 90.0] * 10
    a = analyse(lat, 10.0, 0.3, [10.0] * 30)
    assert a["throughput_share"] == pytest.approx(0.2727, abs=1e-3)
    assert a["burst_fraction"] == pytest.approx(2 / 3, abs=1e-3)
    assert a["paused_fraction"] == pytest.approx(1 / 3, abs=1e-3)
    assert a["mean_abs_log"] > 0.8
    slow = analyse([33.3] * 30, 10.0, 0.3, [10.0] * 30)
    per_period = {100.0: [a], 10.0: [slow]}
    assert closest_to_a_slower_cpu(per_period) == 10.0


def test_percentile() -> None:
    assert percentile([3.0], 90) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 10) == pytest.approx(1.4)
    assert percentile([5.0, 1.0], 100) == 5.0


def test_the_report_names_the_closest_period() -> None:
    rows = [dict(analyse([50.0] * 5, 10.0, 0.2, [10.0] * 5), share=0.2, throttled_periods=0.9)]
    res = {
        "shares": [0.2], "cgroup": "cgroup v2 (/sys/fs/cgroup)", "cores": 2, "rows": 28,
        "seconds": 2.0, "uncapped_ms": {"before": 10.0, "after": 10.0},
        "periods": {"10": rows}, "closest_ms": 10.0,
    }  # fmt: skip
    text = report(res)
    assert "closest to a slower CPU: 10 ms" in text and "0.000" in text
