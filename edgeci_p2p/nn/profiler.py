"""Measuring this machine: per unit kind ``seconds = a * FLOPs + b`` (torch adapter).

The profiler times single units through :class:`~edgeci_p2p.nn.executor.FusedExecutor`
(the code path a peer really runs) on row strips of several heights, takes the
minimum of a few passes over all points (the machine may be shared; the minimum
is the least disturbed estimate of what the CPU can do, and passes spread each
point's repeats over the whole run), and fits a line per kind
with :meth:`~edgeci_p2p.core.cost.LinearFit.fit`:

* ``conv``: VGG-11 conv units at three depths;
* ``pool``: VGG-11 max-pool units;
* ``block``: ResNet-18 BasicBlocks (stride 1 and stride 2);
* ``dw``: MobileNetV2 units with a depthwise conv (an inverted residual block and a
  stride-2 depthwise conv): few FLOPs, much memory traffic, so a rate of their own;
* ``head``: the VGG and ResNet heads (pool + classifier).

Results are cached as JSON under ``$EDGECI_CACHE_DIR`` (default
``~/.cache/edgeci``), keyed by host name, torch version and thread count, so a
daemon's bids reuse one measurement. The whole run stays within about 20 s.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
import torchvision

from edgeci_p2p.core.cost import ComputeModel, LinearFit
from edgeci_p2p.core.geometry import Region, Span, head_flops, trace
from edgeci_p2p.nn.executor import FusedExecutor
from edgeci_p2p.nn.packed import available as packed_available
from edgeci_p2p.nn.packed import pack_convs
from edgeci_p2p.nn.spec import spec_for

PROFILE_VERSION = 2
"""2: convs run with packed weights (nn/packed.py), 1.2-2.5x faster on thin strips."""

# (model, unit name, strip heights) per kind; heights are output rows of that unit.
PLAN: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {
    "conv": [
        ("vgg11", "features.3-4", (1, 4, 12)),
        ("vgg11", "features.8-9", (1, 4, 8)),
        ("vgg11", "features.13-14", (1, 3, 6)),
    ],
    "pool": [
        ("vgg11", "features.2", (2, 16, 56)),
        ("vgg11", "features.10", (2, 14, 28)),
    ],
    "block": [
        ("resnet18", "layer1.0", (1, 8, 24)),
        ("resnet18", "layer3.0", (1, 4, 14)),
    ],
    "dw": [
        ("mobilenet_v2", "features.3.conv", (2, 8, 28)),
        ("mobilenet_v2", "features.7.conv.1.0-2", (1, 4, 14)),
    ],
}
HEADS = ("vgg11", "resnet18")


@dataclass(frozen=True)
class Profile:
    """A measured compute model of this machine plus how it was obtained."""

    compute: ComputeModel
    host: str
    torch_version: str
    threads: int
    seconds: float
    """Wall time the measurement took."""
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Per kind, the (FLOPs, seconds) points the fit used."""
    created: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "host": self.host,
            "torch": self.torch_version,
            "threads": self.threads,
            "seconds": self.seconds,
            "created": self.created,
            "compute": self.compute.to_dict(),
            "points": {k: [list(p) for p in v] for k, v in self.points.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        if d.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {d.get('version')!r}, expected {PROFILE_VERSION}")
        return cls(
            compute=ComputeModel.from_dict(d["compute"]),
            host=str(d["host"]),
            torch_version=str(d["torch"]),
            threads=int(d["threads"]),
            seconds=float(d["seconds"]),
            points={k: [(float(f), float(s)) for f, s in v] for k, v in d["points"].items()},
            created=float(d.get("created", 0.0)),
        )


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECI_CACHE_DIR") or Path.home() / ".cache" / "edgeci")


def cache_path(threads: int) -> Path:
    host = platform.node() or "unknown-host"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in host)
    conv = "" if packed_available() else "-unpacked"  # two kernels, two speeds
    return cache_dir() / f"profile-{safe}-torch{torch.__version__}-t{threads}{conv}.json"


def best_of_passes(
    runs: Sequence[Callable[[], object]],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
    on_run: Callable[[int], None] = lambda k: None,
) -> list[float]:
    """The least seconds each of ``runs`` took over ``repeats`` passes over all of them
    (pass by pass, not each run's repeats back to back)."""
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for k, run in enumerate(runs):
            t0 = clock()
            run()
            best[k] = min(best[k], clock() - t0)
            on_run(k)
    return best


def measure(
    threads: int,
    repeats: int = 5,
    progress: TextIO | None = sys.stderr,
    plan: dict[str, list[tuple[str, str, tuple[int, ...]]]] | None = None,
    heads: tuple[str, ...] | None = None,
) -> Profile:
    """Time the planned unit runs with ``threads`` torch threads and fit per kind."""
    plan = PLAN if plan is None else plan
    heads = HEADS if heads is None else heads
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    executors: dict[str, FusedExecutor] = {}
    total = repeats * (sum(len(h) for runs in plan.values() for _, _, h in runs) + len(heads))
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress.write(f"\rprofiling ({threads} thread(s)): {done}/{total} {what:<32}")
            progress.flush()

    def executor(name: str) -> FusedExecutor:
        if name not in executors:
            model = torchvision.models.get_model(name, weights=None).eval()
            # Packed as every loader packs them (nn/packed.py): what a peer runs.
            executors[name] = FusedExecutor(pack_convs(model), spec_for(name))
        return executors[name]

    # Every point first, then the repeats as passes over all of them: a disturbance
    # (a CFS throttle, a neighbour starting up on the same cores) that lasts a while
    # spoils one pass of each point it overlaps, not every repeat of one point. Back
    # to back, a peer starting beside three others once fitted ResNet blocks 2x slow
    # and its cluster ran ResNet-34 distributed at twice the time of one peer.
    jobs: list[tuple[str, float, Callable[[], object], str]] = []
    points: dict[str, list[tuple[float, float]]] = {}
    try:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for kind, runs in plan.items():
                for model_name, unit_name, heights in runs:
                    ex = executor(model_name)
                    unit = next(u for u in ex.spec.units if u.name == unit_name)
                    _, h, w = unit.out_shape
                    for rows in heights:
                        out = Region(Span(0, min(rows, h)), Span(0, w))
                        tr = trace(ex.spec, unit.index, unit.index + 1, out)
                        c_in = unit.in_shape[0]
                        need = tr.need
                        slab = torch.randn((1, c_in, need.rows.size, need.cols.size), generator=gen)
                        whole = torch.randn((1, *unit.in_shape), generator=gen)
                        scales = ex.scales(unit.index, whole)  # an SE's vector, if any
                        run = functools.partial(ex.run_trace, tr, slab, need, scales)
                        jobs.append((kind, float(tr.flops), run, f"{kind} {unit_name} x{rows}"))
            for model_name in heads:
                ex = executor(model_name)
                c, h, w = ex.spec.head.in_shape
                x = torch.randn((1, c, h, w), generator=gen)
                run = functools.partial(ex.head, x)
                jobs.append(("head", float(head_flops(ex.spec)), run, f"head {model_name}"))
            for _, _, run, _ in jobs:
                run()  # warm-up
            # One thread runs its ops on this thread: time them by this thread's CPU
            # time, which neither a CFS quota's pauses nor other processes' turns on the
            # cores inflate. The daemon scales the result to the share it gets (quota or
            # measured); timed by the wall clock under a quota, the share counted twice.
            clock = time.thread_time if threads == 1 else time.perf_counter
            best = best_of_passes(
                [run for _, _, run, _ in jobs],
                repeats,
                clock=clock,
                on_run=lambda k: tick(jobs[k][3]),
            )
            for (kind, flops, _, _), secs in zip(jobs, best, strict=True):
                points.setdefault(kind, []).append((flops, secs))
    finally:
        torch.set_num_threads(old_threads)
        if progress is not None:
            progress.write("\n")
            progress.flush()
    # A kind measured at fewer than two sizes cannot be fitted; the cost model then
    # falls back to the conv fit for it.
    fits = {
        kind: LinearFit.fit(pts) for kind, pts in points.items() if len({f for f, _ in pts}) > 1
    }
    if "conv" not in fits:
        raise ValueError("the profile needs conv runs at two or more sizes")
    return Profile(
        compute=ComputeModel(fits),
        host=platform.node() or "unknown-host",
        torch_version=torch.__version__,
        threads=threads,
        seconds=time.perf_counter() - start,
        points=points,
        created=time.time(),
    )


def load_or_measure(
    threads: int | None = None, refresh: bool = False, progress: TextIO | None = sys.stderr
) -> tuple[Profile, bool]:
    """The cached profile for this host/torch/threads, measuring it if needed.

    Returns ``(profile, from_cache)``.
    """
    threads = threads or torch.get_num_threads()
    path = cache_path(threads)
    if not refresh and path.is_file():
        try:
            return Profile.from_dict(json.loads(path.read_text())), True
        except (ValueError, KeyError, TypeError) as e:
            if progress is not None:
                progress.write(f"ignoring unreadable profile cache {path}: {e}\n")
    prof = measure(threads, progress=progress)
    # Peers started together on one host share this file: each writes its own
    # temporary file and renames it into place (the last one wins, none breaks). With
    # one shared ".tmp" name, a peer whose file another had renamed away exited.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(prof.to_dict(), indent=1))
        tmp.replace(path)
    except OSError as e:  # a cache we cannot write costs the next start 2 s, nothing more
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if progress is not None:
            progress.write(f"could not cache the profile at {path}: {e}\n")
    return prof, False
