"""``EDGECI_LOOP_PROFILE``: a CPU-time profile of the loop thread, written on stop."""

from __future__ import annotations

import pstats
import threading
from pathlib import Path

from edgeci_p2p.aio.loop_profile import ENV, start_loop_profile


def _blocked(done: threading.Event) -> None:
    """Waits (no CPU) until another thread sets ``done``."""
    done.wait()


def _spin(n: int) -> int:
    return sum(i * i for i in range(n))


def _stats(path: Path) -> dict[str, tuple[int, float]]:
    st = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    return {name: (v[1], v[3]) for (_, _, name), v in st.items()}


def test_off_unless_asked() -> None:
    assert start_loop_profile({}, "peer0") is None
    assert start_loop_profile({ENV: ""}, "peer0") is None


def test_counts_cpu_not_waiting(tmp_path: Path) -> None:
    done = threading.Event()
    helper = threading.Thread(target=lambda: (_spin(300_000), done.set()))
    prof = start_loop_profile({ENV: str(tmp_path / "sub" / "loop")}, "peer0")
    assert prof is not None
    helper.start()
    _blocked(done)  # the helper's CPU, not this thread's: nearly nothing charged here
    _spin(300_000)
    helper.join()
    out = prof.stop()
    assert out == tmp_path / "sub" / "loop.peer0"
    stats = _stats(out)
    calls, spin_cpu = stats["_spin"]
    assert calls == 1  # the helper thread's own call is not profiled
    _, blocked_cpu = stats["_blocked"]
    # A wall clock would charge _blocked the helper's whole spin; CPU time leaves it out.
    assert blocked_cpu < spin_cpu / 4
