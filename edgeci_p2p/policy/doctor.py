"""``edgeci doctor``'s judgement: from what the probes saw, findings, each with its fix.

The probes (``aio/doctor.py``) look: local addresses, a multicast loop test, an mDNS
browse, and per peer a TCP connect, a handshake with the local key and its ``peers``
answer. Everything here is pure: it turns those observations into findings.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeci_p2p.policy.announce import AddressChoice
from edgeci_p2p.wire.messages import PROTOCOL_VERSION

STATUSES = ("ok", "info", "warn", "fail")


@dataclass(frozen=True)
class Finding:
    check: str
    """interfaces, multicast, mdns, tcp, handshake, version, weights, duplicate-id,
    resources, fallback."""
    status: str
    """ok, info, warn or fail."""
    subject: str
    """What it is about: an interface, an address, a node id."""
    summary: str
    fix: str = ""
    """What to do (always given unless the status is ok or info)."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")
        if self.status in ("warn", "fail") and not self.fix:
            raise ValueError(f"a {self.status} finding needs a fix: {self.summary}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Sighted:
    """A peer seen over mDNS."""

    node_id: str
    host: str
    port: int
    version: int


@dataclass
class PeerProbe:
    """What probing one address found."""

    host: str
    port: int
    source: str
    """``mdns`` or ``given`` (``--peer``)."""
    tcp: str = "not tried"
    """``open``, ``refused``, ``timeout`` or another error."""
    handshake: str = "not tried"
    """``ok``, or why it failed."""
    handshake_code: int | None = None
    node_id: str = ""
    name: str = ""
    version: int | None = None
    models: dict[str, str] = field(default_factory=dict)
    own: dict[str, Any] = field(default_factory=dict)
    """Its own entry of its ``peers`` answer."""
    alive_seen: int | None = None
    """How many other peers it sees alive."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def interface_findings(choices: Sequence[AddressChoice]) -> list[Finding]:
    out = [
        Finding(
            "interfaces",
            "ok" if c.announced else "info",
            f"{c.name} {c.address}",
            ("announced" if c.announced else "skipped") + f": {c.why}",
        )
        for c in choices
        if c.name != "?"
    ]
    for c in choices:
        if c.name == "?":
            out.append(
                Finding(
                    "interfaces",
                    "fail",
                    c.address,
                    "no local interface holds this address",
                    "give --mdns-interface an address of this machine (ip -4 addr)",
                )
            )
    if not any(c.announced for c in choices):
        out.append(
            Finding(
                "interfaces",
                "fail",
                "mDNS",
                "no address to announce on: other peers cannot find this one over mDNS",
                "choose the LAN address with --mdns-interface ADDR, or give peers --peer HOST:7420",
            )
        )
    return out


def multicast_finding(address: str, error: str | None) -> Finding:
    if error is None:
        return Finding(
            "multicast",
            "ok",
            address,
            "a multicast datagram sent on this interface came back (the local stack and "
            "firewall let mDNS through; the network beyond is shown by the browse)",
        )
    return Finding(
        "multicast",
        "fail",
        address,
        f"multicast does not work on this interface: {error}",
        "allow 5353/udp (sudo ufw allow 5353/udp), check the interface is up and has "
        "MULTICAST (ip link), or do without mDNS: --no-mdns and --peer HOST:7420",
    )


def browse_findings(
    sighted: Sequence[Sighted], interfaces: Sequence[str], seconds: float, own_port: int = 7420
) -> list[Finding]:
    where = ", ".join(interfaces) or "all interfaces"
    if not sighted:
        return [
            Finding(
                "mdns",
                "fail",
                where,
                f"an mDNS browse saw no edgeci peer in {seconds:g} s",
                "check the peers run with mDNS on this network (--mdns-interface), that "
                "5353/udp is open, and that the access point passes multicast (client "
                "isolation, multicast filtering); else use static addresses: "
                f"edgeci-peer --peer OTHER_HOST:{own_port}, edgeci infer --peer HOST:{own_port}",
            )
        ]
    out = [
        Finding(
            "mdns",
            "ok",
            f"{s.host}:{s.port}",
            f"seen over mDNS: node {s.node_id}, protocol {s.version}",
        )
        for s in sighted
    ]
    return out


def peer_findings(probes: Sequence[PeerProbe], key_given: bool) -> list[Finding]:
    out: list[Finding] = []
    for p in probes:
        out.extend(_one_peer(p, key_given))
    out.extend(_duplicates(probes))
    out.extend(_weights(probes))
    return out


def _one_peer(p: PeerProbe, key_given: bool) -> list[Finding]:
    a = p.address
    if p.tcp != "open":
        return [
            Finding(
                "tcp",
                "fail",
                a,
                f"the TCP port does not answer ({p.tcp})",
                "is edgeci-peer running there, on this port? "
                + (
                    "Nothing listens (connection refused): start it, or fix the port."
                    if p.tcp == "refused"
                    else "No reply: a firewall drops it (sudo ufw allow 7420/tcp) or the "
                    "address is wrong (another network, a container bridge)."
                ),
            )
        ]
    out = [Finding("tcp", "ok", a, "the TCP port answers")]
    if p.handshake != "ok":
        out.append(_handshake_failure(p, key_given))
        return out
    out.append(Finding("handshake", "ok", a, f"handshake with the local key: node {p.node_id}"))
    if p.version is not None and p.version != PROTOCOL_VERSION:
        out.append(
            Finding(
                "version",
                "fail",
                a,
                f"protocol version {p.version}, this side speaks {PROTOCOL_VERSION}",
                "run the same edgeci-p2p version on every device",
            )
        )
    if p.own:
        out.append(_resources(p))
    if p.alive_seen == 0:
        out.append(
            Finding(
                "mdns",
                "warn",
                a,
                "this peer sees no other peer alive",
                f"give it a static peer (edgeci-peer --peer OTHER_HOST:PORT) or fix its "
                f"mDNS interface (see 'edgeci doctor' run on {p.host})",
            )
        )
    return out


def _handshake_failure(p: PeerProbe, key_given: bool) -> Finding:
    code = p.handshake_code
    if code in (105, 106):
        if not key_given:
            summary = "the peer requires a cluster key and none was given"
            fix = "pass the cluster's key file: --cluster-key-file FILE"
        elif code == 105:
            summary = "the peer has no cluster key and this side has one"
            fix = "start every peer with the same --cluster-key-file (same bytes everywhere)"
        else:
            summary = "the cluster key differs (the proof did not check)"
            fix = (
                "use the same key file on every peer and client (whitespace around the key "
                "is stripped; at least 16 bytes)"
            )
        return Finding("handshake", "fail", p.address, f"{summary}: {p.handshake}", fix)
    if code == 104:
        return Finding(
            "handshake",
            "fail",
            p.address,
            f"the peer speaks another protocol version: {p.handshake}",
            "run the same edgeci-p2p version on every device",
        )
    return Finding(
        "handshake",
        "fail",
        p.address,
        f"the handshake failed: {p.handshake}",
        "is that port an edgeci-peer (not another service)? Check its log for 'handshake refused'",
    )


def _resources(p: PeerProbe) -> Finding:
    own = p.own
    threads, quota, age = own.get("threads"), own.get("cpu_quota"), own.get("profile_age_s")
    parts = [
        f"threads {threads if threads is not None else '?'}",
        "CPU quota " + ("none" if quota is None else f"{quota:g} cores"),
        "profile " + ("age unknown" if age is None else f"{age / 86400:.1f} days old"),
        f"{own.get('speed_gflops', '?')} GFLOP/s",
    ]
    summary = ", ".join(parts)
    if isinstance(quota, int | float) and isinstance(threads, int) and quota < threads:
        return Finding(
            "resources",
            "warn",
            p.address,
            summary + f": its quota gives less than its {threads} threads",
            "raise the quota (CPUQuota= in the unit) or run it with --threads "
            f"{max(1, int(quota))}; its bids already count the quota",
        )
    if isinstance(age, int | float) and age > 30 * 86400:
        return Finding(
            "resources",
            "warn",
            p.address,
            summary + ": the profile is over 30 days old",
            "measure it again on that device: edgeci profile --refresh",
        )
    return Finding("resources", "info", p.address, summary)


def _duplicates(probes: Sequence[PeerProbe]) -> list[Finding]:
    by_id: dict[str, list[PeerProbe]] = collections.defaultdict(list)
    for p in probes:
        if p.node_id:
            by_id[p.node_id].append(p)
    out = []
    for node_id, ps in sorted(by_id.items()):
        instances = {str(p.own.get("instance", "")) for p in ps}
        addresses = sorted({p.address for p in ps})
        if len(addresses) < 2:
            continue
        if len(instances) > 1 or "" in instances:
            out.append(
                Finding(
                    "duplicate-id",
                    "fail" if "" not in instances else "warn",
                    node_id,
                    f"two peers present node id {node_id}: {', '.join(addresses)} "
                    "(a state directory copied from one device to another)",
                    "on all but one of them, stop edgeci-peer, delete STATE_DIR/node_id "
                    "(a new id is made at the next start) and start it again",
                )
            )
        else:
            out.append(
                Finding(
                    "duplicate-id",
                    "info",
                    node_id,
                    f"one peer reachable at {', '.join(addresses)}",
                )
            )
    return out


def _weights(probes: Sequence[PeerProbe]) -> list[Finding]:
    """Per model, the fingerprint most peers serve; the others are flagged."""
    seen: dict[str, dict[str, list[PeerProbe]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    done: set[str] = set()
    for p in probes:
        if p.node_id and p.node_id + p.address not in done:
            done.add(p.node_id + p.address)
            for model, fp in p.models.items():
                seen[model][fp].append(p)
    out = []
    for model, fps in sorted(seen.items()):
        if len(fps) == 1:
            fp = next(iter(fps))
            n = len(fps[fp])
            out.append(
                Finding("weights", "ok", model, f"{n} peer(s) serve the same weights {fp[:12]}")
            )
            continue
        ranked = sorted(fps.items(), key=lambda kv: -len(kv[1]))
        top = len(ranked[0][1])
        tie = sum(1 for _, ps in ranked if len(ps) == top) > 1
        for fp, ps in ranked:
            if len(ps) == top and not tie:
                continue
            who = ", ".join(sorted(p.address for p in ps))
            others = "; ".join(f"{f[:12]} on {len(q)}" for f, q in ranked if f != fp)
            out.append(
                Finding(
                    "weights",
                    "fail",
                    who,
                    f"{model} with other weights ({fp[:12]}) than {others} peer(s): "
                    "no work of that model goes between them",
                    "give every peer the same weights (--weights MODEL=PATH with one "
                    "file, or none anywhere for the seeded ones)",
                )
            )
    return out


def exit_code(findings: Sequence[Finding]) -> int:
    return 1 if any(f.status == "fail" for f in findings) else 0
