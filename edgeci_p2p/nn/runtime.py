"""The models a peer serves, the weights it holds, and the synchronous work it does.

Everything here blocks (torch); the daemon calls it from a worker thread so the
event loop never waits on a tile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import torch

from edgeci_p2p.core.geometry import Region, fold_flops, trace
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.meminfo import trim_heap
from edgeci_p2p.nn.executor import FusedExecutor
from edgeci_p2p.nn.extract import describe
from edgeci_p2p.nn.fold import Fold, NotFoldable
from edgeci_p2p.nn.graph import trace_graph
from edgeci_p2p.nn.models import LoadedModel, categories, check_model_name, load_model
from edgeci_p2p.nn.weights import HEAD, ModelWeights, shared_weights
from edgeci_p2p.wire.errors import ErrorCode

log = logging.getLogger("edgeci.peer")


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

    Every model's feature parts are loaded at start, as far as ``budget`` (bytes of
    weights this peer may hold) takes them; the head, or a part not held, is loaded
    the first time work needs it. To make room, the least recently used parts of
    other models (and this model's head, for its features) that no running work uses
    are dropped first; work that does not fit even then is refused
    (:class:`OverMemory`). So a peer whose budget holds one model's features but not
    two serves both, one at a time. Parts loaded on demand beyond the features are
    also dropped by :meth:`drop_idle` once unused for ``idle_s`` seconds. ``clock``
    is injectable for tests.

    With ``resident`` (a reading of this process's resident memory, e.g.
    :func:`edgeci_p2p.meminfo.vm_rss`; only where the process is this one peer), the
    budget also pays for what work leaves resident beyond the weights once the peer is
    idle again: compute kernels paged in, primitive caches, the allocator's kept pages
    (:meth:`settle` measures it). On ResNet-34 and VGG-16 that is 20-40 MB, as much as a
    third of a 100 MB budget, so a budget counting weights alone overran its limit.
    """

    def __init__(
        self,
        names: Iterable[str],
        weights: Mapping[str, str] | None = None,
        *,
        budget: int | None = None,
        idle_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        resident: Callable[[], int | None] | None = None,
        fold: bool = False,
    ) -> None:
        """``fold``: lay out fc1 for folding at once (:meth:`prepare_folds`)."""
        weights = dict(weights or {})
        self.resident = resident
        self._base = None if resident is None else resident()
        """Resident bytes before any weights loaded (imports and the rest of the peer)."""
        self.overhead = 0
        """Resident bytes beyond the base and the weights that work left behind, as last
        measured idle (:meth:`settle`); the budget pays for them like weights."""
        self.budget = budget
        """Bytes of weights this peer may hold (None: no limit)."""
        self.idle_s = idle_s
        self.clock = clock
        self.weights: dict[str, ModelWeights] = {}
        self.models: dict[str, LoadedModel] = {}
        self._held: dict[str, dict[str, float]] = {}
        """Model -> part -> when work last used it."""
        self._pinned: dict[str, frozenset[str]] = {}
        self._busy: Counter[tuple[str, str]] = Counter()
        """(model, part) -> running work that uses it: never dropped meanwhile."""
        self.dropped = 0
        """Parts dropped to make room (not counting idle drops)."""
        self._lock = threading.RLock()
        for name in names:
            check_model_name(name)
            w = shared_weights(name, weights.get(name))
            self.weights[name] = w
            self.models[name] = LoadedModel(name, w.module, w.fingerprint, w.source)
            self._held[name] = {}
            self._pinned[name] = frozenset(w.feature_parts)
            first = len(self.weights) == 1
            if first or self.load_cost(name, w.feature_parts) <= self.room():
                # The first model's features even past the budget: a peer must be
                # able to run its own requests' tiles (a warning says so).
                self.ensure(name, w.feature_parts, force=True)
            else:
                log.info(
                    "%s: feature weights (%.0f MB) not loaded at start: past the memory "
                    "budget with those held; loaded when work needs them",
                    name,
                    w.nbytes(w.feature_parts) / 1e6,
                )
            trace_graph(w.module)  # now, not while a tile runs (see trace_graph)
        if self.budget is not None and self.weights_bytes() > self.budget:
            log.warning(
                "the feature weights held (%.0f MB) are past the memory budget (%.0f MB)",
                self.weights_bytes() / 1e6,
                self.budget / 1e6,
            )
        trim_heap()
        self._executors: dict[tuple[str, int, int], FusedExecutor] = {}
        self._folds: dict[tuple[str, int, int], Fold] = {}
        if fold:
            self.prepare_folds()

    # ---- weights held -------------------------------------------------------------------

    def held(self, name: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held.get(name, {}))

    def weights_bytes(self) -> int:
        """Bytes of weights this peer holds, every model."""
        with self._lock:
            return sum(self.weights[n].nbytes(h) for n, h in self._held.items())

    def room(self) -> int:
        """Bytes of weights that fit without dropping any (huge without a budget): the
        budget less the weights held and the measured :attr:`overhead`."""
        if self.budget is None:
            return 1 << 62
        return self.budget - self.weights_bytes() - self.overhead

    def settle(self) -> int:
        """Give the heap's free pages back (``malloc_trim``) and, with ``resident``,
        measure :attr:`overhead` anew; returns it. Call it on the thread that runs the
        work, once the peer is idle, so no activations of running work are counted."""
        trim_heap()
        if self.resident is not None and self._base is not None:
            now = self.resident()
            if now is not None:
                with self._lock:
                    self.overhead = max(0, now - self._base - self.weights_bytes())
        return self.overhead

    def load_cost(self, name: str, parts: Iterable[str]) -> int:
        """Bytes that holding ``parts`` of ``name`` would add."""
        with self._lock:
            return self.weights[name].nbytes(set(parts) - set(self._held[name]))

    def _victims(self, name: str, want: set[str]) -> list[tuple[float, str, str, int]]:
        """Parts that could be dropped for ``want`` of ``name``, least recently used
        first: (last used, model, part, bytes). Other models' parts, and this model's
        head for its features; never this model's feature parts (the next tile of the
        same request would load them again), nor a part running work uses."""
        return sorted(
            (used, n, p, self.weights[n].nbytes([p]))
            for n, held in self._held.items()
            for p, used in held.items()
            if (n != name or (p == HEAD and p not in want)) and not self._busy[(n, p)]
        )

    def droppable(self, name: str, parts: Iterable[str] = ()) -> int:
        """Bytes held that could be dropped to make room for ``parts`` of ``name``."""
        with self._lock:
            return sum(v[3] for v in self._victims(name, set(parts)))

    def others_bytes(self, name: str) -> int:
        """Bytes held of models other than ``name`` that no running work uses: what a
        bid for ``name`` counts as room (they would be dropped for it)."""
        with self._lock:
            return sum(v[3] for v in self._victims(name, set()) if v[1] != name)

    def fits(self, name: str, parts: Iterable[str]) -> bool:
        """Whether holding ``parts`` of ``name`` stays within the budget, dropping
        other parts (least recently used first) if need be."""
        want = set(parts)
        with self._lock:
            cost = self.load_cost(name, want)
            return cost == 0 or cost <= self.room() + self.droppable(name, want)

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

    def ensure(
        self, name: str, parts: Iterable[str], *, force: bool = False, busy: bool = False
    ) -> None:
        """Hold ``parts`` of ``name`` (loading those not held) and mark them used now,
        dropping the least recently used other parts to make room. Raises
        :class:`OverMemory` if even that would not fit (unless ``force``: then it
        drops what it can and loads past the budget). ``busy``: leave the parts marked
        in use (:meth:`using` unmarks them).

        The loading itself runs outside the store's lock, so bids and ``peers`` (on
        the event loop) never wait behind a load; the parts are counted as held and
        kept from being dropped while they load. One thread (the peer's worker) runs
        a store's work, so none uses a part while it is still loading."""
        w = self.weights[name]
        want = set(parts)
        if self.resident is not None and self.load_cost(name, want):
            # Loading is rare and costs tens of ms: measure what work keeps now, so a
            # burst of work does not load past the budget before the peer next idles.
            self.settle()
        with self._lock:
            held = self._held[name]
            cost = self.load_cost(name, want)
            if cost and not force and not self.fits(name, want):
                raise OverMemory(
                    f"{name}: loading {sorted(want - set(held))} ({cost / 1e6:.0f} MB) would "
                    f"take this peer past its memory budget ({self.weights_bytes() / 1e6:.0f} "
                    f"of {(self.budget or 0) / 1e6:.0f} MB held, "
                    f"{self.overhead / 1e6:.0f} MB kept by work, "
                    f"{self.droppable(name, want) / 1e6:.0f} MB of it droppable)"
                )
            for _, n, p, _ in self._victims(name, want) if cost > self.room() else ():
                if cost <= self.room():
                    break
                del self._held[n][p]
                self.weights[n].release(p)
                self.dropped += 1
                log.info("dropped the %s weights of %s to make room for %s", p, n, name)
            new = sorted(want - set(held))
            now = self.clock()
            for p in want:
                held[p] = now
                self._busy[(name, p)] += 1
        loaded: list[str] = []
        try:
            for p in new:
                w.acquire(p)
                loaded.append(p)
        except BaseException:
            with self._lock:
                for p in new:
                    if p not in loaded:
                        held.pop(p, None)
            self._unbusy(name, want)
            raise
        if not busy:
            self._unbusy(name, want)

    def _unbusy(self, name: str, parts: Iterable[str]) -> None:
        with self._lock:
            for p in parts:
                self._busy[(name, p)] -= 1
                if self._busy[(name, p)] <= 0:
                    del self._busy[(name, p)]

    @contextmanager
    def using(self, name: str, parts: Iterable[str], *, force: bool = False) -> Iterator[None]:
        """Hold ``parts`` of ``name`` (:meth:`ensure`) and keep them from being dropped
        until the block ends (work running on another thread cannot lose them)."""
        want = set(parts)
        self.ensure(name, want, force=force, busy=True)
        try:
            yield
        finally:
            self._unbusy(name, want)

    def drop_idle(self, now: float | None = None) -> list[tuple[str, str]]:
        """Drop the parts loaded on demand that no work used for ``idle_s``; returns them.
        Call it where work runs (the worker thread), so nothing running loses weights."""
        now = self.clock() if now is None else now
        dropped = []
        with self._lock:
            for name, held in self._held.items():
                for p, used in list(held.items()):
                    if (
                        p not in self._pinned[name]
                        and not self._busy[(name, p)]
                        and now - used >= self.idle_s
                    ):
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
        scale: npt.NDArray[np.float32] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Units ``[start, stop)`` of ``name`` (network input ``input_hw``) for region ``out``;
        ``scale``: unit ``start``'s squeeze-and-excitation scale vectors, joined
        (:meth:`FusedExecutor.join_scales`), made by whoever gathered the map."""
        self.get(name, fingerprint)
        ex = self.executor(name, *input_hw)
        try:
            tr = trace(ex.spec, start, stop, out)
        except (ValueError, IndexError) as e:
            raise WorkError(f"bad tile for {name}: {e}") from e
        x = ex.own_slab(slab)
        with self.using(name, self.weights[name].parts_for(ex.spec, start, stop)):
            try:
                vec = None if scale is None else torch.from_numpy(np.array(scale, np.float32))
                y = ex.run_trace(tr, x, slab_region, ex.split_scales(start, vec))
            except ValueError as e:
                raise WorkError(str(e)) from e
        return y.numpy()

    def scales(
        self, name: str, input_hw: tuple[int, int], start: int, x: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32] | None:
        """Unit ``start``'s scale vectors from the whole map ``x`` at boundary ``start``,
        joined (None if it needs none): what the auctioneer sends with the slabs."""
        ex = self.executor(name, *input_hw)
        if not ex.spec.units[start].needs_scale:
            return None
        with self.using(name, self.weights[name].parts_for(ex.spec, start, start + 1)):
            joined = ex.join_scales(start, ex.scales(start, torch.from_numpy(x)))
        assert joined is not None
        return joined.numpy()

    def head(
        self,
        name: str,
        input_hw: tuple[int, int],
        features: torch.Tensor,
        *,
        force: bool = False,
        folded: bool = False,
    ) -> torch.Tensor:
        """The logits; the head is loaded first if not held (``OverMemory`` if that
        exceeds the budget, unless ``force``: the auctioneer's last resort).
        ``folded``: ``features`` are fc1's partial sums from the last strips, added up
        (``Plan.fold_head``), not the last map."""
        self.get(name)
        ex = self.executor(name, *input_hw)
        with self.using(name, [HEAD], force=force):
            if folded:
                return self._fold(name, input_hw).head(features)
            return ex.head(features)

    def fold(
        self,
        name: str,
        fingerprint: str,
        input_hw: tuple[int, int],
        rows: tuple[int, int],
        strip: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.float32]:
        """Rows ``rows`` of the last map times fc1's matching columns
        (:class:`~edgeci_p2p.nn.fold.Fold`): N x out x 1 x 1 partial sums."""
        self.get(name, fingerprint)
        with self.using(name, [HEAD]):
            try:
                fold = self._fold(name, input_hw)
                return fold.partial(torch.from_numpy(np.asarray(strip)), rows).numpy()
            except ValueError as e:  # NotFoldable included
                raise WorkError(str(e)) from e

    def prepare_folds(self, input_hw: tuple[int, int] = (224, 224)) -> list[str]:
        """Load the head and lay out fc1 for folding (:class:`~edgeci_p2p.nn.fold.Fold`)
        for every served model whose head folds at ``input_hw``: the daemon does it
        before it serves, since the copy takes ~1 s of a core for VGG-16, past the
        deadline of a first folded strip on a slow peer. Not where the head and the
        copy would not fit the memory budget (a first fold makes it then). Returns the
        models prepared."""
        done = []
        for name in sorted(self.models):
            spec = self.executor(name, *input_hw).spec
            # 2 FLOPs a weight, 4 bytes a weight: the copy's bytes.
            if fold_flops(spec) == 0 or not self.fits(name, [HEAD]):
                continue
            with self.using(name, [HEAD]):
                if fold_flops(spec) * 2 > self.room():
                    continue
                try:
                    self._fold(name, input_hw).blocks()
                except NotFoldable:
                    continue
            done.append(name)
        return done

    def _fold(self, name: str, input_hw: tuple[int, int]) -> Fold:
        key = (name, *input_hw)
        with self._lock:
            fold = self._folds.get(key)
        if fold is None:
            fold = Fold(self.executor(name, *input_hw))
            with self._lock:
                fold = self._folds.setdefault(key, fold)
        return fold

    def forward(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The unsplit model on one device (--verify): every part, whatever the budget."""
        self.get(name)
        with self.using(name, self.weights[name].parts, force=True), torch.no_grad():
            return self.get(name).module(x)  # type: ignore[no-any-return]
