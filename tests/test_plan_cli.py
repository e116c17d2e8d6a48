"""``edgeci plan`` and ``edgeci bench sim`` end to end (the exact forms the issue names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeci_p2p.cli import main


def test_plan_json_carries_a_valid_plan_and_its_simulation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edgeci_p2p.core.plan import Plan, validate
    from edgeci_p2p.nn.spec import spec_for

    assert (
        main(
            [
                "plan",
                "--model",
                "vgg16",
                "--testbed",
                "pi4-wifi-4",
                "--strategy",
                "edgeci",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    plan = Plan.from_dict(out["plan"])
    validate(plan, spec_for("vgg16"))
    assert out["latency_ms"] == pytest.approx(plan.predicted * 1e3)
    assert out["bytes"] > 0 and set(out["busy_ms"]) == set(plan.devices)


def test_plan_text_and_gantt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "g.png"
    assert (
        main(
            [
                "plan",
                "--model",
                "resnet18",
                "--testbed",
                "homog-4",
                "--strategy",
                "modnn",
                "--gantt",
                str(png),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "modnn plan for resnet18 on homog-4" in text and "simulated latency" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--testbed", "nowhere"]) == 1
    assert "unknown testbed" in capsys.readouterr().err
    assert main(["plan", "--strategy", "guess"]) == 1
    assert "unknown strategy" in capsys.readouterr().err


def test_bench_sim_json_rows_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "sim", "--models", "resnet18", "--testbeds", "homog-4", "pi4-wifi-4"]
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 * 7
    for r in rows:
        assert set(r) == {"model", "testbed", "strategy", "latency_ms", "bytes", "auctioneer_bytes"}
        assert r["latency_ms"] > 0 and r["bytes"] >= r["auctioneer_bytes"] >= 0
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "latency reduction" in table and "deepthings" in table
    assert "edgeci-halo (strip-resident, peer-to-peer halos) vs edgeci" in table


def test_plan_with_zeros_plans_faster_and_refuses_a_bad_share(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def planned(*extra: str) -> dict[str, float]:
        argv = ["plan", "--model", "vgg16", "--testbed", "emulated-4", "--json", *extra]
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    whole, half = planned(), planned("--zeros", "0.5")
    # maps cross in about half their bytes: the plan offloads more and is faster
    assert half["latency_ms"] < 0.97 * whole["latency_ms"]
    assert main(["plan", "--model", "vgg16", "--testbed", "emulated-4", "--zeros", "1.5"]) == 1
    assert "share of zeros" in capsys.readouterr().err
