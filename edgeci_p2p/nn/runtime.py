"""The models a peer serves and the synchronous work it does on them.

Everything here blocks (torch); the daemon calls it from a worker thread so the
event loop never waits on a tile.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt
import torch

from edgeci_p2p.core.geometry import Region, trace
from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.executor import FusedExecutor
from edgeci_p2p.nn.extract import describe
from edgeci_p2p.nn.models import LoadedModel, categories, check_model_name, load_model
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


class ModelStore:
    """Loaded models by name, and one executor per (model, input size)."""

    def __init__(
        self,
        names: Iterable[str],
        weights: Mapping[str, str] | None = None,
    ) -> None:
        weights = dict(weights or {})
        self.models: dict[str, LoadedModel] = {}
        for name in names:
            check_model_name(name)
            self.models[name] = shared_model(name, weights.get(name))
        self._executors: dict[tuple[str, int, int], FusedExecutor] = {}
        self._lock = threading.Lock()

    @property
    def fingerprints(self) -> dict[str, str]:
        return {n: m.fingerprint for n, m in self.models.items()}

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
        x = torch.from_numpy(np.array(slab, dtype=np.float32, copy=True))
        try:
            y = ex.run_trace(tr, x, slab_region)
        except ValueError as e:
            raise WorkError(str(e)) from e
        return y.numpy()

    def head(self, name: str, input_hw: tuple[int, int], features: torch.Tensor) -> torch.Tensor:
        return self.executor(name, *input_hw).head(features)

    def forward(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The unsplit model on one device (the 'local' strategy and --verify)."""
        with torch.no_grad():
            return self.get(name).module(x)  # type: ignore[no-any-return]
