"""The models a peer serves, the weights it holds, and the synchronous work it does.

Everything here blocks (torch); the daemon calls it from a worker thread so the
event loop never waits on a tile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import numpy.typing as npt
import torch

from edgeci_p2p.core.geometry import Region, trace
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.meminfo import trim_heap
from edgeci_p2p.nn.executor import FusedExecutor
from edgeci_p2p.nn.extract import describe
from edgeci_p2p.nn.graph import trace_graph
from edgeci_p2p.nn.models import LoadedModel, categories, check_model_name, load_model
from edgeci_p2p.nn.weights import HEAD, ModelWeights, shared_weights
from edgeci_p2p.wire.errors import ErrorCode


class WorkError(ValueError):
    """A tile or request this peer cannot run (wrong weights, bad region)."""

    code = ErrorCode.BAD_REQUEST
    """The wire code of the error reply."""


class ModelNotServed(WorkError):
    """The model asked for is not one this peer serves."""

    code = ErrorCode.UNKNOWN_MODEL


class WeightsDiffer(WorkError):
    """Work for other weights of a model than this peer holds (fingerprints differ)."""

    code = ErrorCode.FINGERPRINT_MISMATCH


_LOADED: dict[tuple[str, str | None], LoadedModel] = {}
_LOADED_LOCK = threading.Lock()


def shared_model(name: str, weights: str | None = None) -> LoadedModel:
    """One loaded copy per (model, weights) per process: peers in one process (tests,
    benchmarks) share read-only weights instead of holding a copy each."""
    with _LOADED_LOCK:
        key = (name, weights)
        if key not in _LOADED:
            _LOADED[key] = load_model(name, weights)
        return _LOADED[key]


class OverMemory(WorkError):
    """Work whose weights would push this peer over its memory budget."""

    code = ErrorCode.BUSY
    reason = "memory"


class ModelStore:
    """The models a peer serves, their weights loaded by part (``nn/weights.py``),
    and one executor per (model, input size).

    Every model's feature parts are loaded at start; the head, or a part dropped
    since, is loaded the first time work needs it, unless that would take the
    weights this peer holds past ``budget`` bytes (``OverMemory``). Parts loaded on
    demand are dropped by :meth:`drop_idle` once unused for ``idle_s`` seconds.
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        names: Iterable[str],
        weights: Mapping[str, str] | None = None,
        *,
        budget: int | None = None,
        idle_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        weights = dict(weights or {})
        self.budget = budget
        """Bytes of weights this peer may hold (None: no limit)."""
        self.idle_s = idle_s
        self.clock = clock
        self.weights: dict[str, ModelWeights] = {}
        self.models: dict[str, LoadedModel] = {}
        self._held: dict[str, dict[str, float]] = {}
        """Model -> part -> when work last used it."""
        self._pinned: dict[str, frozenset[str]] = {}
        self._lock = threading.RLock()
        for name in names:
            check_model_name(name)
            w = shared_weights(name, weights.get(name))
            self.weights[name] = w
            self.models[name] = LoadedModel(name, w.module, w.fingerprint, w.source)
            self._held[name] = {}
            self._pinned[name] = frozenset(w.feature_parts)
            self.ensure(name, w.feature_parts, force=True)
            trace_graph(w.module)  # now, not while a tile runs (see trace_graph)
        trim_heap()  # the fingerprint drew every tensor once (VGG-16's fc1: 411 MB)
        self._executors: dict[tuple[str, int, int], FusedExecutor] = {}

    # ---- weights held -------------------------------------------------------------------

    def held(self, name: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held.get(name, {}))

    def weights_bytes(self) -> int:
        """Bytes of weights this peer holds, every model."""
        with self._lock:
            return sum(self.weights[n].nbytes(h) for n, h in self._held.items())

    def load_cost(self, name: str, parts: Iterable[str]) -> int:
        """Bytes that holding ``parts`` of ``name`` would add."""
        with self._lock:
            return self.weights[name].nbytes(set(parts) - set(self._held[name]))

    def fits(self, name: str, parts: Iterable[str]) -> bool:
        """Whether holding ``parts`` of ``name`` stays within the budget."""
        cost = self.load_cost(name, parts)
        return cost == 0 or self.budget is None or self.weights_bytes() + cost <= self.budget

    def holds(self) -> dict[str, list[str]]:
        """What this peer holds, by model, for people: 'features' when every feature
        part is held (else each part held), 'head' when the head is."""
        out: dict[str, list[str]] = {}
        for name, w in self.weights.items():
            h = self.held(name)
            feats = set(w.feature_parts)
            got = ["features"] if feats <= h else sorted(h & feats)
            out[name] = got + ([HEAD] if HEAD in h else [])
        return out

    def ensure(self, name: str, parts: Iterable[str], *, force: bool = False) -> None:
        """Hold ``parts`` of ``name`` (loading those not held) and mark them used now.
        Raises :class:`OverMemory` if that would exceed the budget (unless ``force``)."""
        w = self.weights[name]
        with self._lock:
            held = self._held[name]
            want = set(parts)
            if not force and not self.fits(name, want):
                raise OverMemory(
                    f"{name}: loading {sorted(want - set(held))} "
                    f"({self.load_cost(name, want) / 1e6:.0f} MB) would take this peer past "
                    f"its memory budget ({self.weights_bytes() / 1e6:.0f} of "
                    f"{(self.budget or 0) / 1e6:.0f} MB held)"
                )
            now = self.clock()
            for p in sorted(want):
                if p not in held:
                    w.acquire(p)
                held[p] = now

    def drop_idle(self, now: float | None = None) -> list[tuple[str, str]]:
        """Drop the parts loaded on demand that no work used for ``idle_s``; returns them.
        Call it where work runs (the worker thread), so nothing running loses weights."""
        now = self.clock() if now is None else now
        dropped = []
        with self._lock:
            for name, held in self._held.items():
                for p, used in list(held.items()):
                    if p not in self._pinned[name] and now - used >= self.idle_s:
                        del held[p]
                        self.weights[name].release(p)
                        dropped.append((name, p))
        return dropped

    def close(self) -> None:
        """Release every part (a stopped peer in a process that goes on)."""
        with self._lock:
            for name, held in self._held.items():
                for p in held:
                    self.weights[name].release(p)
                held.clear()

    # ---- models -------------------------------------------------------------------------

    @property
    def fingerprints(self) -> dict[str, str]:
        return {n: m.fingerprint for n, m in self.models.items()}

    def model_of(self, fingerprint: str) -> str:
        """The model served here with these weights ('' if none)."""
        return next((n for n, m in self.models.items() if m.fingerprint == fingerprint), "")

    def get(self, name: str, fingerprint: str | None = None) -> LoadedModel:
        m = self.models.get(name)
        if m is None:
            raise ModelNotServed(
                f"model {name!r} is not served here (serving {sorted(self.models)})"
            )
        if fingerprint is not None and fingerprint != m.fingerprint:
            raise WeightsDiffer(
                f"weights of {name} differ: asked for {fingerprint[:12]}, have {m.fingerprint[:12]}"
            )
        return m

    def executor(self, name: str, height: int, width: int) -> FusedExecutor:
        key = (name, height, width)
        with self._lock:
            ex = self._executors.get(key)
            if ex is None:
                m = self.get(name)
                ex = FusedExecutor(m.module, describe(m.module, name, height, width, m.fingerprint))
                self._executors[key] = ex
            return ex

    def spec(self, name: str, height: int, width: int) -> ModelSpec:
        return self.executor(name, height, width).spec

    def labels(self, name: str) -> list[str]:
        return categories(self.get(name).name)

    # ---- work -------------------------------------------------------------------------------

    def run_tile(
        self,
        name: str,
        fingerprint: str,
        input_hw: tuple[int, int],
        start: int,
        stop: int,
        out: Region,
        slab: npt.NDArray[np.float32],
        slab_region: Region,
    ) -> npt.NDArray[np.float32]:
        """Units ``[start, stop)`` of ``name`` (network input ``input_hw``) for region ``out``."""
        self.get(name, fingerprint)
        ex = self.executor(name, *input_hw)
        try:
            tr = trace(ex.spec, start, stop, out)
        except (ValueError, IndexError) as e:
            raise WorkError(f"bad tile for {name}: {e}") from e
        self.ensure(name, self.weights[name].parts_for(ex.spec, start, stop))
        x = torch.from_numpy(np.array(slab, dtype=np.float32, copy=True))
        try:
            y = ex.run_trace(tr, x, slab_region)
        except ValueError as e:
            raise WorkError(str(e)) from e
        return y.numpy()

    def head(
        self,
        name: str,
        input_hw: tuple[int, int],
        features: torch.Tensor,
        *,
        force: bool = False,
    ) -> torch.Tensor:
        """The logits; the head is loaded first if not held (``OverMemory`` if that
        exceeds the budget, unless ``force``: the auctioneer's last resort)."""
        self.get(name)
        self.ensure(name, [HEAD], force=force)
        return self.executor(name, *input_hw).head(features)

    def forward(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The unsplit model on one device (--verify): every part, whatever the budget."""
        self.get(name)
        self.ensure(name, self.weights[name].parts, force=True)
        with torch.no_grad():
            return self.get(name).module(x)  # type: ignore[no-any-return]
