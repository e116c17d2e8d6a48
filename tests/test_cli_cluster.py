"""A cluster of ``edgeci-peer`` subprocesses that find each other over mDNS on 127.0.0.1
(no static peers), driven through the ``edgeci`` CLI exactly as a user would."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeci_p2p.demo import ready_port, start_peer
from edgeci_p2p.nn.images import sample_image_path

BIN = Path(sys.executable).parent
READY = re.compile(r"ready on port (\d+)")


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[list[int]]:
    env = {"EDGECI_CACHE_DIR": str(tmp_path / "cache")}
    procs = []
    try:
        for i in range(3):
            procs.append(start_peer(str(tmp_path / f"peer{i}"), f"p{i}", env=env))
        yield [ready_port(p, 120) for p in procs]
        # SIGTERM shuts a peer down cleanly (exit code 0).
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(timeout=20) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def edgeci(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgeci"), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(300)
def test_subprocess_cluster_over_mdns(peers: list[int], tmp_path: Path) -> None:
    entry = f"127.0.0.1:{peers[0]}"
    deadline = time.monotonic() + 30
    while True:
        r = edgeci("peers", "--peer", entry, "--json")
        assert r.returncode == 0, r.stderr
        view = json.loads(r.stdout.strip().splitlines()[-1])
        if sum(1 for p in view if p["alive"]) == 3:
            break
        assert time.monotonic() < deadline, f"mDNS did not find the peers: {view}"
        time.sleep(0.5)
    assert {p["name"] for p in view} == {"p0", "p1", "p2"}

    # Without an address: browse mDNS on 127.0.0.1 to find a peer, then ask it.
    r = edgeci("peers", "--mdns-interface", "127.0.0.1", "--json")
    assert r.returncode == 0, r.stderr
    assert {p["name"] for p in json.loads(r.stdout.strip().splitlines()[-1])} == {"p0", "p1", "p2"}

    image = str(sample_image_path())
    r = edgeci(
        "infer",
        "--peer",
        f"127.0.0.1:{peers[1]}",
        "--model",
        "resnet34",
        "--verify",
        "--json",
        image,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["model"] == "resnet34" and out["strategy"] == "edgeci"
    assert len(out["top5"]) == 5 and out["latency_ms"] > 0 and out["plan"]["stages"]
    assert out["max_abs_diff"] <= 1e-5 + 1.3e-6 * out["max_abs_ref"]

    r = edgeci(
        "infer",
        "--peer",
        entry,
        "--model",
        "resnet34",
        "--strategy",
        "modnn",
        "--size",
        "native",
        "--verify",
        "--json",
        image,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
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
