"""``edgeci-peer``'s process: one daemon until SIGINT/SIGTERM, with uvloop where
available, and what only a whole process may decide (the collector, the ready line)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from typing import Any

from edgeci_p2p.aio.config import PeerConfig
from edgeci_p2p.aio.daemon import PeerDaemon
from edgeci_p2p.aio.loop_profile import start_loop_profile

log = logging.getLogger("edgeci.peer")


def run_forever(
    config: PeerConfig, freeze_gc: bool = True
) -> None:  # pragma: no cover - exercised via the CLI
    """Run a daemon until SIGINT/SIGTERM, with uvloop where available.

    ``freeze_gc``: once started, move everything start-up built into the collector's
    permanent generation (``gc.freeze``). Start-up leaves ~340k tracked objects (torch,
    torchvision, the models, the profile) that live as long as the process; a full
    collection walks them all, 113 ms on one core here, and holds the GIL meanwhile,
    so every thread of the peer stalls: on the emulated 0.13-core peer ~0.85 s in the
    middle of a strip, which stalled its neighbours and the whole request (traces of
    edgeci-halo requests showed 1.2 s "compute" pieces predicted at 15 ms). Frozen,
    they are never walked again; collections see only what requests create.
    """

    async def main() -> None:
        daemon = PeerDaemon(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def quiet_cancel(loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
            # Connection handlers cancelled at shutdown are expected, not errors.
            if not isinstance(ctx.get("exception"), asyncio.CancelledError):
                loop.default_exception_handler(ctx)

        loop.set_exception_handler(quiet_cancel)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await daemon.start()
        if freeze_gc:
            gc.collect()
            gc.freeze()
        # One line (readers wait for it): the dashboard's address on it when there is one.
        http = f", dashboard on {daemon.http.url}" if daemon.http is not None else ""
        print(
            f"edgeci-peer {daemon.name} ({daemon.node_id}) ready on port {daemon.port}{http}",
            flush=True,
        )
        notice = daemon.security_notice()
        if notice is not None:  # after the ready line, which scripts read first
            log.warning("%s", notice)
        profile = start_loop_profile(os.environ, daemon.name)
        await stop.wait()
        if profile is not None:
            profile.stop()
        log.info("shutting down")
        await daemon.stop()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


__all__ = ["run_forever"]
