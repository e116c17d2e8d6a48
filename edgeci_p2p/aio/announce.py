"""The addresses a peer announces on over mDNS (decided in ``policy/announce.py``),
each choice logged at start: which are announced, which skipped and why."""

from __future__ import annotations

import logging

from edgeci_p2p.aio.config import PeerConfig
from edgeci_p2p.aio.discovery import local_interfaces
from edgeci_p2p.policy.announce import announce_choices, announced

log = logging.getLogger("edgeci.peer")


def announce_addresses(cfg: PeerConfig, port: int) -> list[str]:
    """The addresses to announce ``port`` on; none (with a warning saying what to do
    instead) when this machine has no address worth announcing."""
    choices = announce_choices(local_interfaces(), cfg.mdns_interfaces, cfg.host)
    for c in choices:
        verb = "announcing on" if c.announced else "skipping"
        log.info("mDNS: %s %s %s (%s)", verb, c.name, c.address, c.why)
    addresses = announced(choices)
    if not addresses:
        log.warning(
            "mDNS: no address to announce on; other peers will not find this one over "
            "mDNS: give them --peer %s:%d, or choose one with --mdns-interface ADDR",
            cfg.host if cfg.host != "0.0.0.0" else "THIS_HOST",
            port,
        )
    return addresses


__all__ = ["announce_addresses"]
