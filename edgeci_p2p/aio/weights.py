"""What a peer holds of its models' weights, for its bids, and dropping what it loaded
on demand once no work has used it for a while (``nn/weights.py`` loads by part)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from edgeci_p2p.auction.bidder import Holding
from edgeci_p2p.nn.runtime import ModelStore
from edgeci_p2p.nn.weights import HEAD

log = logging.getLogger("edgeci.peer")

UNLIMITED = 1 << 62
"""The bidder's memory when none could be measured."""


def holding(store: ModelStore, fingerprint: str) -> Holding:
    """What ``store`` holds, for a bid on the model with ``fingerprint``."""
    # What work left resident counts as held and not droppable, like weights.
    total = store.weights_bytes() + store.overhead
    name = next((n for n, f in store.fingerprints.items() if f == fingerprint), None)
    if name is None:
        return Holding(total)
    w = store.weights[name]
    load = {
        "features": store.load_cost(name, w.feature_parts),
        HEAD: store.load_cost(name, [HEAD]),
    }
    return Holding(
        total,
        tuple(store.holds()[name]),
        {k: v for k, v in load.items() if v},
        store.others_bytes(name),
    )


async def drop_idle_weights(store: ModelStore, worker: ThreadPoolExecutor) -> None:
    """Now and then, drop the weights loaded on demand that no work used lately (on
    the worker thread, so no tile loses its weights while it runs)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(max(1.0, min(store.idle_s / 4, 60.0)))
        for model, part in await loop.run_in_executor(worker, store.drop_idle):
            log.info("dropped the %s weights of %s (unused %.0f s)", part, model, store.idle_s)


__all__ = ["UNLIMITED", "drop_idle_weights", "holding"]
