"""A CPU-time profile of a peer's event loop, asked for with ``EDGECI_LOOP_PROFILE``.

On a capped peer the event loop spends the same CPU quota as the convolutions
(``benchmarks/peer_cpu.py`` measured it at a fifth to two fifths of each emulated
peer's CPU), so where the loop's CPU goes is where a distributed request's overhead
is. ``cProfile``'s default clock is the wall clock, which on such a peer charges a
function for every CFS pause and every wake-up that hands the core to another
thread: ``SimpleQueue.put`` (waking the worker) read 0.37 ms a call. This profile
counts the loop thread's own CPU (``time.thread_time``); ``cProfile`` sees only the
thread that enables it, so the compute worker is left out.

``EDGECI_LOOP_PROFILE=PREFIX``: from the ready line until shutdown, then written to
``PREFIX.<peer name>`` (``pstats`` format; ``benchmarks/cluster.py --profile-loops
DIR`` sets it for every peer). Profiling multiplies the loop's CPU by 2-5: read the
shares, not the seconds.
"""

from __future__ import annotations

import cProfile
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV = "EDGECI_LOOP_PROFILE"

log = logging.getLogger("edgeci.peer")


@dataclass
class LoopProfile:
    """The running profile and where it goes."""

    path: Path
    profile: cProfile.Profile

    def stop(self) -> Path:
        """Stop profiling and write the stats (``pstats`` format); returns the file."""
        self.profile.disable()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.profile.dump_stats(str(self.path))
        log.info("event loop CPU profile written to %s", self.path)
        return self.path


def start_loop_profile(env: Mapping[str, str], name: str) -> LoopProfile | None:
    """In the loop's thread: a CPU-time profile of it when ``env`` asks for one
    (:data:`ENV`), written to ``<prefix>.<name>`` by :meth:`LoopProfile.stop`."""
    prefix = env.get(ENV, "")
    if not prefix:
        return None
    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    return LoopProfile(Path(f"{prefix}.{name}"), prof)


__all__ = ["ENV", "LoopProfile", "start_loop_profile"]
