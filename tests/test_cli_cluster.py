"""A cluster of ``edgeci-peer`` subprocesses that find each other over mDNS on 127.0.0.1
(no static peers), driven through the ``edgeci`` CLI exactly as a user would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeci_p2p.demo import ready_port
from edgeci_p2p.nn.images import sample_image_path
from tests.daemons import LOOPBACK_MDNS, peer_processes

BIN = Path(sys.executable).parent


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[list[int]]:
    with peer_processes(tmp_path, 3) as running:
        yield [p.port for p in running]
        # SIGTERM shuts a peer down cleanly (exit code 0).
        for p in running:
            p.proc.send_signal(signal.SIGTERM)
        for p in running:
            assert p.proc.wait(timeout=20) == 0


def edgeci(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgeci"), *args], capture_output=True, text=True, timeout=timeout
    )


def answer(r: subprocess.CompletedProcess[str]) -> Any:
    """The JSON last line of a command that must have succeeded."""
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def infer_verified(peer: str, image: str, *options: str) -> Any:
    """``edgeci infer --verify --json`` of ResNet-34 through ``peer``."""
    args = ["--peer", peer, "--model", "resnet34", *options, "--verify", "--json", image]
    return answer(edgeci("infer", *args))


@pytest.mark.timeout(300)
@LOOPBACK_MDNS
def test_subprocess_cluster_over_mdns(peers: list[int], tmp_path: Path) -> None:
    entry = f"127.0.0.1:{peers[0]}"
    deadline = time.monotonic() + 30
    while True:
        view = answer(edgeci("peers", "--peer", entry, "--json"))
        if sum(1 for p in view if p["alive"]) == 3:
            break
        assert time.monotonic() < deadline, f"mDNS did not find the peers: {view}"
        time.sleep(0.5)
    # The alive ones (another suite's peers on this host's loopback mDNS may be sighted).
    assert {p["name"] for p in view if p["alive"]} == {"p0", "p1", "p2"}

    # Without an address: browse mDNS on 127.0.0.1 to find a peer, then ask it.
    # (Another cluster announced on this host's loopback, a benchmark's, may be found
    # beside this one: the browse must find these three.)
    found = answer(edgeci("peers", "--mdns-interface", "127.0.0.1", "--json"))
    assert {"p0", "p1", "p2"} <= {p["name"] for p in found}

    image = str(sample_image_path())
    out = infer_verified(f"127.0.0.1:{peers[1]}", image)
    assert out["model"] == "resnet34" and out["strategy"] == "edgeci"
    assert len(out["top5"]) == 5 and out["latency_ms"] > 0 and out["plan"]["stages"]
    assert out["max_abs_diff"] <= 1e-5 + 1.3e-6 * out["max_abs_ref"]

    out = infer_verified(entry, image, "--strategy", "modnn", "--size", "native")
    assert out["max_abs_diff"] <= 1e-5 + 1.3e-6 * out["max_abs_ref"]

    gantt = tmp_path / "live.png"
    r = edgeci("plan", "--peer", entry, "--model", "resnet34", "--gantt", str(gantt))
    assert r.returncode == 0, r.stderr
    assert "edgeci plan for resnet34" in r.stdout and gantt.stat().st_size > 0

    # Errors exit non-zero with one line on stderr.
    r = edgeci("infer", "--peer", entry, "--model", "nosuchnet", image)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    r = edgeci("peers", "--peer", "127.0.0.1:1")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1


def test_a_peer_that_fails_to_start_says_why() -> None:
    """``make demo`` and the subprocess tests report the peer's own last words."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.exit('edgeci-peer: error: port in use')"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    with pytest.raises(RuntimeError, match=r"exit code 1\); it said: edgeci-peer: error: port"):
        ready_port(proc, 20)
