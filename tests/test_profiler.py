"""The profiler: a small real measurement, the cache keyed by host/torch/threads."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from edgeci_p2p.core.cost import ComputeModel, LinearFit
from edgeci_p2p.nn import profiler
from edgeci_p2p.nn.profiler import Profile, best_of_passes, cache_path, load_or_measure, measure

SMALL = {
    # 1 and 64 stem rows: 2 and 136 MFLOP. At 1 and 8 rows both ran in the ~0.4 ms a
    # call costs anyway, and their order was timing noise (a CI run saw 8 rows faster).
    "conv": [("resnet18", "stem", (1, 64))],
    "block": [("resnet18", "layer4.0", (1, 7))],
    "pool": [("resnet18", "maxpool", (2, 20))],
}


def test_a_small_measurement_fits_positive_speeds_and_reports_progress() -> None:
    out = io.StringIO()
    prof = measure(1, repeats=2, progress=out, plan=SMALL, heads=("resnet18",))
    # One head size: no head fit; no dw units measured: dw derived from conv.
    assert set(prof.compute.fits) == {"conv", "block", "pool", "dw"}
    assert "dw" not in prof.compute.to_dict()
    for kind, fit in prof.compute.fits.items():
        if kind == "dw":  # derived from conv, not measured
            assert fit.a > 0 and fit.b >= 0 and kind not in prof.points
            continue
        # each fit is the fit of the points the profile reports for its kind
        assert len(prof.points[kind]) == 2
        assert fit == LinearFit.fit(prof.points[kind]), kind
    # bigger strips take longer: the fit is increasing and close to what it measured
    conv = prof.points["conv"]
    assert conv[1][0] > conv[0][0] and conv[1][1] > conv[0][1]
    assert prof.compute.seconds("head", 1e6) == prof.compute.fits["conv"].seconds(1e6)
    assert "profiling (1 thread(s)): 14/14" in out.getvalue()  # 7 points, 2 passes


def test_linear_fit_goes_through_two_points_or_through_the_origin() -> None:
    # 1 ms per GFLOP plus 0.5 ms a call: two points determine the line.
    fit = LinearFit.fit([(1e9, 1.5e-3), (3e9, 3.5e-3)])
    assert fit.a == pytest.approx(1e-12) and fit.b == pytest.approx(5e-4)
    assert fit.rel_error == pytest.approx(0.0, abs=1e-12)
    assert fit.gflops == pytest.approx(1000.0)
    # Noise that makes the intercept negative: refitted through the origin instead,
    # least squares a = sum(f*s) / sum(f*f).
    noisy = LinearFit.fit([(1e9, 0.5e-3), (2e9, 2.5e-3)])
    assert noisy.b == 0.0
    assert noisy.a == pytest.approx((1e9 * 0.5e-3 + 2e9 * 2.5e-3) / (1e18 + 4e18))
    assert noisy.seconds(0) == 0.0 and noisy.seconds(1e9) == pytest.approx(noisy.a * 1e9)
    with pytest.raises(ValueError, match="two or more distinct"):
        LinearFit.fit([(1e9, 1e-3), (1e9, 2e-3)])


def test_a_long_disturbance_spoils_one_pass_not_every_repeat_of_a_point() -> None:
    """Each run takes 1 s, or 3 s while something else holds the CPU (the first 15 s):
    back to back, the first point's five repeats would all fall in it."""
    now = [0.0]

    def clock() -> float:
        return now[0]

    def run() -> None:
        now[0] += 3.0 if now[0] < 15.0 else 1.0

    ticks: list[int] = []
    best = best_of_passes([run, run, run], 5, clock=clock, on_run=ticks.append)
    assert best == [1.0, 1.0, 1.0]
    assert ticks == [0, 1, 2] * 5


def test_cache_is_keyed_by_host_torch_and_threads_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECI_CACHE_DIR", str(tmp_path))
    assert cache_path(1).parent == tmp_path
    assert cache_path(1) != cache_path(2)
    assert "torch" in cache_path(1).name
    prof = Profile(
        ComputeModel({"conv": LinearFit(1e-10, 1e-4), "pool": LinearFit(1e-9, 0.0)}),
        host="h",
        torch_version="t",
        threads=3,
        seconds=1.0,
        points={"conv": [(1.0, 2.0), (3.0, 4.0)]},
    )
    cache_path(3).write_text(json.dumps(prof.to_dict()))
    got, cached = load_or_measure(3, progress=None)
    assert cached and got == prof


def test_unreadable_cache_is_measured_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECI_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(profiler, "PLAN", SMALL)
    monkeypatch.setattr(profiler, "HEADS", ())
    cache_path(1).write_text('{"version": 0}')
    err = io.StringIO()
    prof, cached = load_or_measure(1, progress=err)
    assert not cached and "ignoring unreadable profile cache" in err.getvalue()
    assert Profile.from_dict(json.loads(cache_path(1).read_text())) == prof


def test_a_cache_that_cannot_be_written_costs_nothing_but_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profiler, "PLAN", SMALL)
    monkeypatch.setattr(profiler, "HEADS", ())
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setenv("EDGECI_CACHE_DIR", str(blocked))
    err = io.StringIO()
    prof, cached = load_or_measure(1, progress=err)
    assert not cached and "conv" in prof.compute.fits
    assert "could not cache the profile" in err.getvalue()
    # Written normally, no temporary file is left beside the cache.
    monkeypatch.setenv("EDGECI_CACHE_DIR", str(tmp_path / "cache"))
    load_or_measure(1, progress=None)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache_path(1).name]
