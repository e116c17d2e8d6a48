"""benchmarks/cluster.py --transport tls,plaintext: a --plaintext set of the same peers
beside the TLS one, the client told both entry peers, every row saying its transport,
and the TLS / plaintext median ratio (issue 20). No emulation: the peers' and the
client's command lines are built and parsed, the client's output is faked."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import cluster
import cluster_client
from cluster import Bench, diagnostics, summarise, table, transport_ratios
from emulation import make_layout


def _rec(strategy: str, transport: str, latency: float) -> dict[str, Any]:
    return {
        "event": "result", "model": "vgg16", "strategy": strategy, "transport": transport,
        "latency_s": latency, "total_s": latency, "auction_s": 0.0, "head_s": 0.0,
        "transfer_s": 0.0, "bytes": 0.0, "predicted_s": 0.5, "devices": [0, 1], "stages": 2,
    }  # fmt: skip


def _option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.fixture
def bench() -> Any:
    args = cluster.parse_args(["--transport", "tls,plaintext", "--k", "3", "--models", "vgg16"])
    b = Bench(args, make_layout([0.4, 0.2, 0.1], 100.0), emu=None)  # type: ignore[arg-type]
    yield b
    shutil.rmtree(b.workdir, ignore_errors=True)


def test_the_plaintext_peers_run_beside_the_tls_ones_and_never_meet_them(bench: Bench) -> None:
    slots = bench.layout.peers
    tls = [bench.peer_argv(s, "tls") for s in slots]
    plain = [bench.peer_argv(s, "plaintext") for s in slots]
    for argv in tls:  # as before --transport: mDNS in the namespace, TLS
        assert "--plaintext" not in argv and _option(argv, "--port") == ["7420"]
        assert _option(argv, "--mdns-interface") and not _option(argv, "--peer")
    for i, argv in enumerate(plain):
        assert "--plaintext" in argv and "--no-mdns" in argv
        assert _option(argv, "--port") == ["7421"]
        # Every earlier plaintext peer, none of the TLS ones: a full mesh of their own.
        assert _option(argv, "--peer") == [f"{s.address}:7421" for s in slots[:i]]
        assert _option(argv, "--host-id") == _option(tls[i], "--host-id")
        assert _option(argv, "--state-dir") != _option(tls[i], "--state-dir")


def test_the_client_is_told_both_entry_peers_and_rows_keep_their_transport(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [_rec("edgeci", "tls", t) for t in (0.70, 0.72, 0.74)]
    lines += [_rec("edgeci", "plaintext", t) for t in (0.68, 0.70, 0.71)]
    seen: list[list[str]] = []

    class FakeClient:
        def __init__(self, argv: list[str], **_: Any) -> None:
            seen.append(argv)
            self.stdout = io.StringIO("".join(json.dumps(x) + "\n" for x in lines))

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(cluster.subprocess, "Popen", FakeClient)
    results = bench.measure()
    argv = seen[0]
    args = cluster_client.parse_args(argv[argv.index(str(cluster.CLIENT)) + 1 :])
    peer0 = bench.layout.peers[0].address
    assert cluster_client.entry_peers(args) == {
        "tls": f"{peer0}:7420",
        "plaintext": f"{peer0}:7421",
    }
    rows = summarise(results, ideal=1.75)
    assert [(r.strategy, r.transport, r.median_ms) for r in rows] == [
        ("edgeci", "tls", 720.0),
        ("edgeci", "plaintext", 700.0),
    ]
    diag = diagnostics(results)
    (ratio,) = transport_ratios(diag)
    assert ratio["ratio"] == pytest.approx(720 / 700, abs=1e-4)
    assert (ratio["plaintext_p25_ms"], ratio["plaintext_p75_ms"]) == (690.0, 705.0)
    text = table(rows, diag, shaped=True)
    assert "transport" in text.splitlines()[0] and "plaintext" in text
    assert "transport" not in table(rows[:1], diag, shaped=True)  # TLS only: as before
    assert "= 1.029 (target <= 1.05)" in cluster.ratio_lines([ratio])[0]


def test_each_round_shuffles_strategy_and_transport_pairs_alike() -> None:
    one = cluster_client.arms(["edgeci", "local"], ["tls"], 3)
    both = cluster_client.arms(["edgeci", "local"], ["tls", "plaintext"], 3)
    assert sorted(both) == sorted((s, t) for s in ("edgeci", "local") for t in ("tls", "plaintext"))
    # TLS alone keeps the order the client used before --transports.
    import random

    order = ["edgeci", "local"]
    random.Random(3).shuffle(order)
    assert [s for s, _ in one] == order


@pytest.mark.parametrize("spec", ["tls,tls", "quic", ""])
def test_a_bad_transport_is_refused(spec: str) -> None:
    with pytest.raises(SystemExit):
        cluster.parse_args(["--transport", spec])
    with pytest.raises(SystemExit):
        cluster_client.parse_args(["--peer", "a:1", "--transports", spec])
    with pytest.raises(SystemExit):  # plaintext asked, no plaintext entry peer given
        cluster_client.parse_args(["--peer", "a:1", "--transports", "tls,plaintext"])
