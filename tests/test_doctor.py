"""``edgeci doctor`` on loopback: a healthy cluster, and each problem reported with its
fix (a port that does not answer, another cluster key, other weights, one node id
on two peers, mDNS where nobody is). mDNS is bound to 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import secrets
import socket
from collections.abc import AsyncIterator

import pytest

from edgeci_p2p import cli
from edgeci_p2p.aio.connection import ConnectionLost, handshake
from edgeci_p2p.aio.doctor import DoctorOptions, diagnose
from edgeci_p2p.aio.tls import server_context
from edgeci_p2p.policy.announce import Interface, announce_choices
from edgeci_p2p.policy.doctor import Finding, PeerProbe, peer_findings
from edgeci_p2p.wire.errors import ProtocolError
from edgeci_p2p.wire.identity import Identity
from edgeci_p2p.wire.messages import Peers, PeersResult
from edgeci_p2p.wire.session import Channel, SessionConfig
from tests.daemons import HOST, LOOPBACK_MDNS, start_daemons, stop_all, wait_connected

KEY = b"doctor-test-cluster-key"
OTHER_KEY = b"another-cluster-key-entirely"


def test_a_peer_announces_on_lan_addresses_and_says_why_it_skips_the_others() -> None:
    ifaces = [
        Interface("lo", "127.0.0.1"),
        Interface("eth0", "192.168.1.20"),
        Interface("docker0", "172.17.0.1"),
        Interface("tailscale0", "100.64.0.3"),
    ]
    got = {c.name: (c.announced, c.why) for c in announce_choices(ifaces)}
    assert got["eth0"][0] and not any(got[n][0] for n in ("lo", "docker0", "tailscale0"))
    assert "loopback" in got["lo"][1] and "bridge" in got["docker0"][1]
    assert "VPN" in got["tailscale0"][1]
    forced = announce_choices(ifaces, ["172.17.0.1", "10.9.9.9"])
    assert [(c.address, c.announced) for c in forced if c.announced] == [("172.17.0.1", True)]
    assert any(c.address == "10.9.9.9" and "no local interface" in c.why for c in forced)


def test_weights_are_judged_by_the_majority_and_a_tie_flags_both() -> None:
    def probe(port: int, fp: str) -> PeerProbe:
        p = PeerProbe(HOST, port, "given", tcp="open", handshake="ok", version=1)
        p.node_id, p.models = f"n{port}", {"resnet34": fp}
        return p

    odd = peer_findings([probe(1, "a"), probe(2, "a"), probe(3, "b")], True)
    bad = [f for f in odd if f.check == "weights" and f.status == "fail"]
    assert [f.subject for f in bad] == [f"{HOST}:3"] and bad[0].fix
    tie = peer_findings([probe(1, "a"), probe(2, "b")], True)
    assert sum(f.check == "weights" and f.status == "fail" for f in tie) == 2


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def fake_peer(node_id: str, models: dict[str, str]) -> AsyncIterator[int]:
    """A peer that handshakes with KEY, serves ``models`` (by fingerprint) and answers
    ``peers``: another weights file, without loading one."""
    port = 0
    ident = Identity.generate()
    node_id = ident.node_id  # over TLS a node id is its key's

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = SessionConfig(node_id, port=port, models=models, key=KEY, identity=ident)
        with contextlib.suppress(ConnectionLost, ProtocolError, TimeoutError):
            conn = await handshake(reader, writer, config, channel=Channel(listener=True))
            while True:
                msg = await conn.recv()
                if isinstance(msg, Peers):
                    own = {"id": node_id, "self": True, "alive": True, "threads": 1}
                    await conn.send(PeersResult(msg.request_id, {"peers": [own]}))

    server = await asyncio.start_server(serve, HOST, 0, ssl=server_context(ident))
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()


def about(findings: list[Finding], subject: str) -> list[Finding]:
    return [f for f in findings if f.subject == subject]


def failing(findings: list[Finding], subject: str) -> list[Finding]:
    return [f for f in about(findings, subject) if f.status == "fail"]


@pytest.mark.asyncio
@pytest.mark.timeout(120)
@pytest.mark.one_loop
@LOOPBACK_MDNS
async def test_doctor_on_loopback_reports_each_problem_with_its_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edgeci.peer")
    # A copied state directory: two peers with one key pair, hence one node id.
    copied = Identity.generate()
    # Started together (their mDNS registrations and CPU checks overlap); all stopped.
    started = await asyncio.gather(
        start_daemons(1, mdns=True, cluster_key=KEY, host_id="doctor-a"),
        start_daemons(1, mdns=True, cluster_key=KEY, host_id="doctor-b"),
        start_daemons(1, cluster_key=OTHER_KEY),
        start_daemons(
            2, identities=[copied, copied], cluster_key=KEY,
            per_peer={1: {"peers": []}},
        ),
        return_exceptions=True,
    )  # fmt: skip
    daemons = [d for group in started if isinstance(group, list) for d in group]
    try:
        for group in started:
            if isinstance(group, BaseException):
                raise group
        (a_peer,), (b_peer,), (other_key,), dup = (g for g in started if isinstance(g, list))
        healthy = [a_peer, b_peer]
        # Each mDNS peer logged at start the address it announces on.
        said = [r.getMessage() for r in caplog.records if "mDNS: announcing on" in r.getMessage()]
        assert len(said) == 2 and all(HOST in m for m in said), said
        await wait_connected(healthy)
        a, b = (f"{HOST}:{d.port}" for d in healthy)

        # Healthy: both peers seen over mDNS on 127.0.0.1 and nothing wrong with them.
        wanted = {(HOST, d.port) for d in healthy}
        found = await diagnose(
            DoctorOptions(
                mdns_interfaces=[HOST], key=KEY, browse_seconds=30,
                enough=lambda seen: wanted <= {(s.host, s.port) for s in seen},
            )
        )  # fmt: skip
        assert [f.status for f in found if f.check == "multicast"] == ["ok"]
        for addr, d in zip((a, b), healthy, strict=True):
            checks = {f.check: f.status for f in about(found, addr)}
            assert checks["mdns"] == "ok" and checks["tcp"] == "ok", checks
            # (a warning when the peer measured a CPU share below its threads: load)
            assert checks["handshake"] == "ok" and checks["resources"] != "fail", checks
            assert not failing(found, addr)
            hello = next(f for f in about(found, addr) if f.check == "handshake")
            assert d.node_id in hello.summary
            resources = next(f for f in about(found, addr) if f.check == "resources")
            assert "threads 1" in resources.summary and "profile" in resources.summary
        weights = [f for f in found if f.check == "weights" and f.subject == "resnet34"]
        assert weights and all(f.status == "ok" for f in weights), weights

        # Problems, given with --peer (mDNS off): each reported with a fix.
        dead = f"{HOST}:{closed_port()}"
        async with fake_peer("other-weights", {"resnet34": "f" * 64}) as fake_port:
            fake = f"{HOST}:{fake_port}"
            given = [a, b, dead, f"{HOST}:{other_key.port}", fake]
            given += [f"{HOST}:{d.port}" for d in dup]
            opts = DoctorOptions(
                peers=[(h, int(p)) for h, _, p in (g.rpartition(":") for g in given)],
                no_mdns=True,
                key=KEY,
            )
            found = await diagnose(opts)
        assert all(f.fix for f in found if f.status in ("warn", "fail"))
        assert not failing(found, a) and not failing(found, b)
        (tcp,) = failing(found, dead)
        assert tcp.check == "tcp" and "refused" in tcp.summary and "start it" in tcp.fix
        (key,) = failing(found, f"{HOST}:{other_key.port}")
        assert key.check == "handshake" and "key differs" in key.summary
        assert "same key file" in key.fix
        (weights,) = failing(found, fake)
        assert weights.check == "weights" and "other weights" in weights.summary
        assert "--weights" in weights.fix
        (dup_id,) = failing(found, copied.node_id)
        assert dup_id.check == "duplicate-id" and "node_id" in dup_id.fix

        # mDNS where nobody is: a service type no one announces on 127.0.0.1 (other
        # test runs on this machine may announce the real one there).
        found = await diagnose(
            DoctorOptions(
                mdns_interfaces=[HOST], key=KEY, browse_seconds=0.3,
                service_type=f"_edgeci-{secrets.token_hex(3)}._tcp.local.",
            )
        )  # fmt: skip
        (nobody,) = [f for f in found if f.check == "mdns"]
        assert nobody.status == "fail" and "saw no edgeci peer" in nobody.summary
        assert "--peer" in nobody.fix
        (fallback,) = [f for f in found if f.check == "fallback"]
        assert "--peer HOST:7420" in fallback.fix
    finally:
        await stop_all(daemons)


def test_doctor_json_gives_the_findings_and_fails_on_a_dead_peer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = f"{HOST}:{closed_port()}"
    code = cli.main(["doctor", "--no-mdns", "--peer", dead, "--json"])
    body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and body["ok"] is False
    (tcp,) = [f for f in body["findings"] if f["subject"] == dead]
    assert set(tcp) == {"check", "status", "subject", "summary", "fix"}
    assert tcp["check"] == "tcp" and tcp["status"] == "fail" and tcp["fix"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(["doctor", "--no-mdns", "--peer", dead])
    assert "[FAIL] tcp" in out.getvalue() and "fix: " in out.getvalue()
