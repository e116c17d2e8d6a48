"""Which local addresses a peer announces itself on over mDNS, and why it skips the rest.

Users whose peers never saw each other found the wrong interface chosen (a Docker
bridge, a VPN) more often than anything else. A peer therefore announces, by
default, on the addresses other devices of a LAN can reach, skips the others with
a reason, and says so at start (``edgeci-peer``'s log and ``edgeci doctor``).
``--mdns-interface ADDR`` forces the choice; ``--host ADDR`` (not 0.0.0.0) announces
that address.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BRIDGES = ("docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "vxlan", "kube",
           "lxcbr", "lxdbr", "podman", "vmnet", "vboxnet", "weave")  # fmt: skip
"""Name prefixes of container and VM bridges: other devices cannot reach these."""
TUNNELS = ("tun", "tap", "wg", "tailscale", "zt", "utun", "ppp", "ipsec", "nordlynx")
"""Name prefixes of VPN tunnels: multicast (mDNS) does not cross them."""


@dataclass(frozen=True)
class Interface:
    name: str
    address: str
    """An IPv4 address of it."""


@dataclass(frozen=True)
class AddressChoice:
    name: str
    address: str
    announced: bool
    why: str


def skip_reason(iface: Interface) -> str | None:
    """Why a peer announces nothing on ``iface`` by default, or None."""
    name = iface.name.lower()
    if iface.address.startswith("127."):
        return (
            "loopback: no other device reaches it "
            "(--mdns-interface 127.0.0.1 for a cluster on this machine)"
        )
    if name.startswith(BRIDGES):
        return "a container or VM bridge: devices on the LAN cannot reach this address"
    if name.startswith(TUNNELS):
        return "a VPN tunnel: mDNS multicast does not cross it (give such peers --peer ADDR:PORT)"
    return None


def announce_choices(
    interfaces: Sequence[Interface], mdns_interfaces: Sequence[str] = (), host: str = "0.0.0.0"
) -> list[AddressChoice]:
    """Every local IPv4 address, announced or skipped with the reason; addresses named
    in ``mdns_interfaces`` that no interface holds are listed as not announced."""
    held = {i.address for i in interfaces}
    out: list[AddressChoice] = []
    chosen = [a for a in mdns_interfaces if a != "0.0.0.0"]
    for i in interfaces:
        if chosen:
            if i.address in chosen:
                out.append(AddressChoice(i.name, i.address, True, "chosen with --mdns-interface"))
            else:
                out.append(AddressChoice(i.name, i.address, False, "not chosen (--mdns-interface)"))
        elif host != "0.0.0.0":
            ok = i.address == host
            why = "the address it listens on (--host)" if ok else "not the --host address"
            out.append(AddressChoice(i.name, i.address, ok, why))
        else:
            reason = skip_reason(i)
            out.append(
                AddressChoice(i.name, i.address, reason is None, reason or "reachable from the LAN")
            )
    for a in list(chosen) + ([host] if host != "0.0.0.0" and not chosen else []):
        if a not in held:
            out.append(AddressChoice("?", a, False, "no local interface holds this address"))
    return out


def announced(choices: Sequence[AddressChoice]) -> list[str]:
    return [c.address for c in choices if c.announced]
