"""``edgeci doctor``'s probes: what this machine and the peers it sees or is given
look like from here. The findings are judged in ``policy/doctor.py``."""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgeci_p2p.aio.connection import ConnectionLost, connect, handshake
from edgeci_p2p.aio.discovery import SERVICE_TYPE, Sighting, browse, local_interfaces
from edgeci_p2p.aio.tls import client_context
from edgeci_p2p.policy.announce import Interface, announce_choices, announced
from edgeci_p2p.policy.doctor import (
    Finding,
    PeerProbe,
    Sighted,
    browse_findings,
    interface_findings,
    multicast_finding,
    peer_findings,
)
from edgeci_p2p.wire.errors import ProtocolError
from edgeci_p2p.wire.identity import Identity
from edgeci_p2p.wire.messages import Peers, PeersResult
from edgeci_p2p.wire.session import SessionConfig

PROBE_GROUP = "224.0.0.251"
"""The mDNS group; the loop test uses a port of its own, so responders never see it."""


@dataclass
class DoctorOptions:
    peers: list[tuple[str, int]] = field(default_factory=list)
    mdns_interfaces: list[str] = field(default_factory=list)
    host: str = "0.0.0.0"
    no_mdns: bool = False
    key: bytes | None = None
    browse_seconds: float = 3.0
    timeout: float = 2.0
    """Seconds for one TCP connect, handshake or answer."""
    service_type: str = SERVICE_TYPE
    enough: Callable[[list[Sighting]], bool] | None = None
    """Stop browsing once these sightings suffice (tests)."""
    interfaces: Sequence[Interface] | None = None
    """This machine's addresses (default: read from the system)."""
    plaintext: bool = False
    """Handshake without TLS (only peers started with ``--plaintext`` accept it)."""


def multicast_loop(address: str, timeout: float = 1.0) -> str | None:
    """None when a datagram sent to the mDNS group on this interface comes back to a
    socket that joined the group there; else why not."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind(("0.0.0.0", 0))
        port = rx.getsockname()[1]
        mreq = socket.inet_aton(PROBE_GROUP) + socket.inet_aton(address)
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        token = secrets.token_bytes(16)
        tx.sendto(token, (PROBE_GROUP, port))
        rx.settimeout(timeout)
        while True:
            data, _ = rx.recvfrom(64)
            if data == token:
                return None
    except TimeoutError:
        return f"the datagram did not come back within {timeout:g} s (a firewall drops it?)"
    except OSError as e:
        return f"{e.strerror or e} (joining or sending on {address})"
    finally:
        rx.close()
        tx.close()


async def probe_peer(
    host: str,
    port: int,
    source: str,
    key: bytes | None,
    timeout: float = 2.0,
    plaintext: bool = False,
) -> PeerProbe:
    """TCP connect, handshake with ``key`` (inside TLS 1.3 unless ``plaintext``), then
    its ``peers`` answer."""
    p = PeerProbe(host, port, source)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        p.tcp = "refused"
        return p
    except TimeoutError:
        p.tcp = "timeout"
        return p
    except OSError as e:
        p.tcp = e.strerror or str(e)
        return p
    p.tcp = "open"
    ident = Identity.generate("edgeci doctor")
    config = SessionConfig(node_id=ident.node_id, role="client", key=key, identity=ident)
    try:
        if plaintext:
            conn = await handshake(reader, writer, config, timeout=timeout)
        else:
            # The port answers; now the peer's own way in: TLS, then the handshake
            # bound to its certificate.
            writer.close()
            conn = await connect(host, port, config, timeout=timeout, tls=client_context())
    except ProtocolError as e:
        p.handshake, p.handshake_code = str(e), int(e.code)
        return p
    except ConnectionLost as e:
        m = re.search(r"\(code (\d+)\)", str(e))
        p.handshake, p.handshake_code = str(e), int(m.group(1)) if m else None
        return p
    except TimeoutError:
        p.handshake = f"no handshake within {timeout:g} s (not an edgeci-peer?)"
        return p
    p.handshake = "ok"
    hello = conn.peer
    p.node_id, p.name, p.version, p.models = hello.node_id, hello.name, hello.version, hello.models
    try:
        rid = f"doctor-{secrets.token_hex(4)}"
        await conn.send(Peers(rid))
        while True:
            msg = await asyncio.wait_for(conn.recv(), timeout)
            if isinstance(msg, PeersResult) and msg.request_id == rid:
                break
        entries = [e for e in msg.body.get("peers", []) if isinstance(e, dict)]
        p.own = next((e for e in entries if e.get("self")), {})
        p.alive_seen = sum(1 for e in entries if not e.get("self") and e.get("alive"))
    except (ConnectionLost, TimeoutError):
        pass
    finally:
        await conn.close()
    return p


async def diagnose(opts: DoctorOptions) -> list[Finding]:
    """Every finding, in the order a user should read them."""
    ifaces = list(opts.interfaces) if opts.interfaces is not None else local_interfaces()
    choices = announce_choices(ifaces, opts.mdns_interfaces, opts.host)
    findings = interface_findings(choices)
    sighted: list[Sighted] = []
    chosen = announced(choices)
    if opts.no_mdns:
        findings.append(Finding("mdns", "info", "mDNS", "not browsed (--no-mdns)"))
    elif chosen:
        for address in chosen:
            error = await asyncio.to_thread(multicast_loop, address)
            findings.append(multicast_finding(address, error))
        found = await browse(
            chosen, opts.browse_seconds, service_type=opts.service_type, enough=opts.enough
        )
        sighted = [Sighted(s.node_id, s.host, s.port, s.version) for s in found]
        port = opts.peers[0][1] if opts.peers else 7420
        findings += browse_findings(sighted, chosen, opts.browse_seconds, port)
    targets: list[tuple[str, int, str]] = [(h, p, "given") for h, p in opts.peers]
    for s in sighted:
        if (s.host, s.port) not in {(h, p) for h, p, _ in targets}:
            targets.append((s.host, s.port, "mdns"))
    probes = await asyncio.gather(
        *(probe_peer(h, p, src, opts.key, opts.timeout, opts.plaintext) for h, p, src in targets)
    )
    findings += peer_findings(probes, opts.key is not None)
    if not targets:
        findings.append(
            Finding(
                "fallback",
                "warn",
                "peers",
                "no peer was seen or given, so none could be checked",
                "name one: edgeci doctor --peer HOST:7420; without multicast, start each "
                "peer with --peer OTHER_HOST:7420 (one reachable peer is enough) and clients "
                "with --peer HOST:7420",
            )
        )
    return findings
