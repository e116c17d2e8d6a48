"""mDNS announcement and browsing with python-zeroconf (``_edgeci._tcp.local.``).

mDNS says who *exists*; it does not say who is alive (a SIGKILLed peer's record
lingers until its TTL). The daemon therefore only uses what it finds here as
addresses to connect to; liveness comes from heartbeats on its own connections.
The TXT record carries only node id, protocol version and port; capabilities
travel over TCP after the handshake.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ifaddr
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edgeci_p2p.policy.announce import Interface

SERVICE_TYPE = "_edgeci._tcp.local."
log = logging.getLogger("edgeci.discovery")


@dataclass(frozen=True)
class Sighting:
    """A peer announced over mDNS."""

    node_id: str
    host: str
    port: int
    version: int


def local_interfaces() -> list[Interface]:
    """This machine's IPv4 addresses and the interfaces holding them."""
    return [
        Interface(str(a.nice_name), str(ip.ip))
        for a in ifaddr.get_adapters()
        for ip in a.ips
        if ip.is_IPv4
    ]


def _txt(info: AsyncServiceInfo, key: str) -> str:
    raw = info.properties.get(key.encode())
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""


class Discovery:
    """Announce this node and report the others; ``interfaces`` empty means all."""

    def __init__(
        self,
        node_id: str,
        port: int,
        version: int,
        on_sighting: Callable[[Sighting], None],
        interfaces: Sequence[str] = (),
        announce_addresses: Sequence[str] = (),
    ) -> None:
        self.node_id = node_id
        self.port = port
        self.version = version
        self.on_sighting = on_sighting
        self.interfaces = list(interfaces)
        self.announce_addresses = list(announce_addresses) or self.interfaces
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def async_start(self) -> None:
        self._azc = AsyncZeroconf(
            interfaces=self.interfaces or None,  # type: ignore[arg-type]
            ip_version=IPVersion.V4Only,
        )
        addresses = [socket.inet_aton(a) for a in self.announce_addresses if a != "0.0.0.0"]
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.node_id}.{SERVICE_TYPE}",
            addresses=addresses or None,
            port=self.port,
            properties={"id": self.node_id, "v": str(self.version), "port": str(self.port)},
            server=f"edgeci-{self.node_id}.local.",
        )
        await self._azc.async_register_service(self._info, allow_name_change=False)
        self._browser = AsyncServiceBrowser(
            self._azc.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
        )

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            return
        # Strong reference: a bare create_task may be garbage-collected mid-flight.
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        assert self._azc is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._azc.zeroconf, 3000):
            return
        node_id = _txt(info, "id")
        if not node_id or node_id == self.node_id:
            return
        try:
            version = int(_txt(info, "v") or 0)
        except ValueError:
            version = 0
        for host in info.parsed_addresses(IPVersion.V4Only):
            self.on_sighting(Sighting(node_id, host, int(info.port or 0), version))

    async def async_stop(self) -> None:
        """Send the mDNS goodbye and close."""
        for t in list(self._tasks):
            t.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._azc is not None:
            if self._info is not None:
                await self._azc.async_unregister_service(self._info)
            await self._azc.async_close()
        self._azc = None


async def browse(
    interfaces: Sequence[str],
    seconds: float = 3.0,
    *,
    service_type: str = SERVICE_TYPE,
    enough: Callable[[list[Sighting]], bool] | None = None,
) -> list[Sighting]:
    """Listen for peers on ``interfaces`` for ``seconds`` without announcing ourselves
    (less once ``enough(the sightings so far)`` is true)."""
    found: dict[tuple[str, str, int], Sighting] = {}
    azc = AsyncZeroconf(interfaces=list(interfaces) or None, ip_version=IPVersion.V4Only)  # type: ignore[arg-type]
    tasks: set[asyncio.Task[None]] = set()

    async def resolve(service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(azc.zeroconf, 2000):
            return
        node_id = _txt(info, "id")
        try:
            version = int(_txt(info, "v") or 0)
        except ValueError:
            version = 0
        for host in info.parsed_addresses(IPVersion.V4Only):
            s = Sighting(node_id, host, int(info.port or 0), version)
            found[(s.node_id, s.host, s.port)] = s

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Removed:
            t = asyncio.get_running_loop().create_task(resolve(service_type, name))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(azc.zeroconf, service_type, handlers=[on_change])
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            if enough is not None and enough(list(found.values())):
                break
            await asyncio.sleep(min(0.05, seconds))
        if tasks:
            await asyncio.wait(list(tasks), timeout=2.0)
    finally:
        await browser.async_cancel()
        await azc.async_close()
    return sorted(found.values(), key=lambda s: (s.node_id, s.host))
