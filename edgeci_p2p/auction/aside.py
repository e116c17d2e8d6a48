"""Planning aside: a decision made in a child process of the lowest CPU priority.

When only the bids' speed figures moved, :class:`~.decider.CachedDecider` answers the
round with the plan it has and leaves the new one to be planned off the request's
path. Planned in a thread of the auctioneer's own process, that plan (0.4 s of pure
Python for VGG-16's halo plan on an uncapped core; 1-1.6 s on an emulated 0.4-core
peer) took the CPU and the GIL from the requests that ran meanwhile: on the emulated
cluster the auctioneer's compute and head ran 2.5-3x their plan in those requests
(VGG-16 at 1.2-1.7 s against 0.5 s), and the slow pieces then moved the auctioneer's
own calibration, which asked for the next plan. A child process has a GIL of its own,
and it is stopped while the daemon serves work (:func:`hold`) and runs at
``SCHED_IDLE`` (or nice 19) otherwise.

This module is pure: the job (a plain dict of JSON values, no Python objects), the
child's answer, and the loop a child runs (:func:`main`, ``python -m
edgeci_p2p.auction.aside``: one JSON job per line on stdin, one JSON answer per line
on stdout). The asyncio side that starts and feeds the child is
:mod:`edgeci_p2p.aio.aside`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from edgeci_p2p.auction import messages as am
from edgeci_p2p.auction.awas import AwasPlanner
from edgeci_p2p.auction.decider import Entry, StaticPlanner
from edgeci_p2p.core.cost import ComputeModel, Testbed
from edgeci_p2p.core.plan import Plan
from edgeci_p2p.core.units import ModelSpec

Planner = AwasPlanner | StaticPlanner


def job(planner: Planner, call: am.CallForBids, bids: Sequence[am.Bid]) -> dict[str, Any]:
    """What a child needs to make the decision ``planner(call, bids)`` would make."""
    own = planner.own
    return {
        "kind": "awas" if isinstance(planner, AwasPlanner) else "static",
        "strategy": planner.strategy,
        "spec": planner.spec.to_dict(),
        # Properties of the request, not of the model, which the dict form leaves out:
        # without them the child planned float32 input slabs and every map whole (no
        # zero suppression), for an auctioneer that prices pixels and half the bytes.
        "input_itemsize": planner.spec.input_itemsize,
        "wire_fraction": list(planner.spec.wire_fraction),
        "shared_medium": planner.shared_medium,
        "fold": getattr(planner, "fold", True),
        "own": None if own is None else own.to_dict(),
        "call": call.to_dict(),
        "bids": [b.to_dict() for b in bids],
    }


class Child:
    """A child's planners, one per kind of decision, kept across jobs: a planner keeps
    its workload tables and its last plan (``AwasPlanner.previous``) between calls. The
    auctioneer's own model changes with its calibration; the planner takes the new one.
    """

    keep = 16
    """Planners kept (kinds of request: model, input size, strategy), oldest dropped."""

    def __init__(self) -> None:
        self._planners: dict[str, Planner] = {}

    def answer(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """The decision a job asks for, or ``{"error": ...}`` saying why there is none."""
        try:
            planner = self._planner(job)
            call = am.CallForBids.from_dict(job["call"])
            bids = [am.Bid.from_dict(b) for b in job["bids"]]
            items = planner(call, bids)
        except Exception as e:  # the parent keeps its stale plan and logs this
            return {"error": f"{type(e).__name__}: {e}"}
        return answer_of((items, planner.plan, planner.testbed, getattr(planner, "left_out", {})))

    def _planner(self, job: Mapping[str, Any]) -> Planner:
        sizes = [job.get("input_itemsize", 4), job.get("wire_fraction", [])]
        key = json.dumps(
            [
                job["kind"],
                job["strategy"],
                job["spec"],
                job["shared_medium"],
                job.get("fold"),
                sizes,
            ],
            sort_keys=True,
        )
        own = None if job["own"] is None else ComputeModel.from_dict(job["own"])
        got = self._planners.pop(key, None)
        if got is None:
            spec = dataclasses.replace(
                ModelSpec.from_dict(dict(job["spec"])),
                input_itemsize=int(sizes[0]),
                wire_fraction=tuple(float(x) for x in sizes[1]),
            )
            medium, strategy = bool(job["shared_medium"]), str(job["strategy"])
            if job["kind"] == "awas":
                fold = bool(job.get("fold", True))
                got = AwasPlanner(spec, medium, own, strategy, fold=fold)
            elif own is None:
                raise ValueError("a static planner needs the auctioneer's own model")
            else:
                got = StaticPlanner(strategy, spec, own, medium)
        elif own is not None:
            got.own = own
        self._planners[key] = got  # the newest last
        while len(self._planners) > self.keep:
            self._planners.pop(next(iter(self._planners)))
        return got


def answer_of(hit: Entry) -> dict[str, Any]:
    """A decision as a child answers it (JSON values; :func:`entry` reads it back): a
    peer that planned a job for another sends this (``plan_job_result``)."""
    items, plan, testbed, left_out = hit
    return {
        "items": {p: [w.to_dict() for w in ws] for p, ws in items.items()},
        "plan": None if plan is None else plan.to_dict(),
        "testbed": None if testbed is None else testbed.to_dict(),
        "left_out": dict(left_out),
    }


def entry(answer: Mapping[str, Any]) -> Entry:
    """A child's answer as the decider remembers decisions (raises ``ValueError`` on
    an error answer, ``KeyError``/``TypeError`` on a malformed one)."""
    if "error" in answer:
        raise ValueError(f"planning aside failed: {answer['error']}")
    items = {
        str(p): tuple(am.WorkItem.from_dict(w) for w in ws) for p, ws in answer["items"].items()
    }
    plan = None if answer["plan"] is None else Plan.from_dict(answer["plan"])
    testbed = None if answer["testbed"] is None else Testbed.from_dict(answer["testbed"])
    return items, plan, testbed, {str(k): str(v) for k, v in answer["left_out"].items()}


PATIENCE_S = 30.0
"""Seconds a job may wait for its daemon to fall idle before it runs regardless."""


def hold(busy: bool, since: float, now: float, patience_s: float = PATIENCE_S) -> bool:
    """Whether a job sent at ``since`` is held (its child stopped) ``now``: while the
    daemon serves work, unless the job has waited ``patience_s`` already.

    ``SCHED_IDLE`` alone does not keep the child off the requests' CPU where the CPU is
    a quota (a cgroup's ``cpu.max``, as on the emulated cluster): the child runs while
    the request waits for its peers, spends the period's quota, and the request then
    waits for the next period. On the emulated cluster it took 16-32% of a 40% core
    during a halo request. Held, it runs only between requests; a daemon that is never
    idle still gets the new plan after ``patience_s``.
    """
    return busy and now - since < patience_s


def lowest_priority() -> str:
    """Make this process (the child: one thread) run only when nothing else of its
    cgroup wants the CPU; says which way it could."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:
            pass
    try:
        os.nice(19 - os.nice(0))
        return "nice 19"
    except OSError:
        return "normal priority"


def bound_to_parent() -> None:
    """The child ends with its parent, not with the signals sent to the parent's group.

    A ``SIGTERM`` to the daemon's process group (a service manager, the benchmark's
    teardown) would end the child first, and the daemon would plan in a thread while
    it shuts down; the daemon ends the child itself by closing its stdin. A daemon
    killed outright leaves a child that is maybe stopped (``SIGSTOP``) and would never
    read the end of its stdin: on Linux the kernel kills it (``PR_SET_PDEATHSIG``).
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


PR_SET_PDEATHSIG = 1


def main(stdin: IO[str] = sys.stdin, stdout: IO[str] = sys.stdout) -> None:
    """The child: a job per line in, an answer per line out, until stdin closes."""
    bound_to_parent()
    how = lowest_priority()
    # Only now may the parent stop this process: bound to it, it cannot be left behind.
    stdout.write(json.dumps({"ready": how}) + "\n")
    stdout.flush()
    child = Child()
    for line in stdin:
        try:
            got = json.loads(line)
            answer = child.answer(got) if isinstance(got, dict) else {"error": "not a job"}
        except ValueError as e:
            answer = {"error": f"unreadable job: {e}"}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


if __name__ == "__main__":
    main()
