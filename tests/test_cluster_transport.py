"""benchmarks/cluster.py --transport tls,plaintext: a --plaintext set of the same peers
beside the TLS one, the client told both entry peers, every row saying its transport,
and the TLS / plaintext median ratio (issue 20). No emulation: the peers' and the
client's command lines are built and parsed, the client's output is faked."""

from __future__ import annotations

import asyncio
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
    assert (args.warmup_rounds, args.quiet) == (2, 5.0)  # cluster.py's defaults, passed on
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


def test_the_client_warms_up_every_strategy_then_leaves_the_peers_quiet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sent: list[tuple[str, str, bool]] = []  # (transport, strategy, traced)
    quiet: list[float] = []

    class FakeReply:
        def __init__(self) -> None:
            self.timing = {"total": 0.5}
            self.plan: dict[str, Any] = {"predicted": 0.5, "stages": []}
            self.trace = None

    class FakeClient:
        def __init__(self, address: str, **kw: Any) -> None:
            self.transport = "plaintext" if kw.get("plaintext") else "tls"

        async def __aenter__(self) -> FakeClient:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def infer(self, x: Any, model: str, strategy: str, trace: bool = False) -> Any:
            sent.append((self.transport, strategy, trace))
            return FakeReply()

    async def no_wait(*a: Any, **kw: Any) -> int:
        return 0

    async def sleep(seconds: float) -> None:
        quiet.append(seconds)

    monkeypatch.setattr(cluster_client, "Client", FakeClient)
    monkeypatch.setattr(cluster_client, "wait_for_cluster", no_wait)
    monkeypatch.setattr(cluster_client.asyncio, "sleep", sleep)
    args = cluster_client.parse_args(
        ["--peer", "a:1", "--plaintext-peer", "a:2", "--transports", "tls,plaintext",
         "--models", "vgg16", "--strategies", "edgeci,local", "--k", "1", "--settle", "0",
         "--warmup-rounds", "2", "--quiet", "4"]
    )  # fmt: skip
    assert asyncio.run(cluster_client.measure(args)) == 0
    pairs = {(t, s) for t in ("tls", "plaintext") for s in ("edgeci", "local")}
    # The --warmup request on each transport, then two rounds of every pair, then quiet.
    assert sent[:2] == [("tls", "edgeci", False), ("plaintext", "edgeci", False)]
    rounds = [(t, s) for t, s, _ in sent[2:10]]
    assert set(rounds[:4]) == pairs and set(rounds[4:]) == pairs
    measured = sent[10:]
    assert {(t, s) for t, s, _ in measured} == pairs and len(measured) == 4
    assert quiet[0] == 4.0  # before any measured request (gap 0 sleeps after it)
    assert sum(1 for line in capsys.readouterr().out.splitlines() if '"result"' in line) == 4


def test_the_warm_up_flags_reach_the_client_and_refuse_negatives(bench: Bench) -> None:
    seen = cluster.parse_args(["--warmup-rounds", "3", "--quiet", "2.5"])
    assert (seen.warmup_rounds, seen.quiet) == (3, 2.5)
    with pytest.raises(SystemExit):
        cluster.parse_args(["--quiet", "-1"])
    with pytest.raises(SystemExit):
        cluster_client.parse_args(["--peer", "a:1", "--warmup-rounds", "-1"])
