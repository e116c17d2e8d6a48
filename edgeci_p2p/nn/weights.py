"""A model's weights loaded by part, on demand, bit-identical to the whole model's.

A peer that runs only convolution tiles needs VGG-16's 59 MB of feature weights,
not its 554 MB: the classifier (fc1 alone is 102M weights) is needed only where
the head runs. :class:`ModelWeights` builds the model on the meta device (shapes,
no memory) and materialises one *part* at a time:

- a VGG feature layer (``features.<i>``) or a ResNet block (``layer<n>.<k>``), or
  ResNet's stem (``conv1``, ``bn1``): what a unit of the spec runs;
- ``head``: the classifier (VGG) or ``fc`` (ResNet).

Seeded weights are drawn tensor by tensor with each tensor's own generator
(:func:`~edgeci_p2p.nn.models.seed_tensor`), so a part drawn alone has exactly
the bits of the whole model's; a weights file is memory-mapped and only the
part's tensors copied out. The fingerprint is the whole model's, as
:func:`~edgeci_p2p.nn.models.fingerprint` computes it, hashed one tensor at a
time, large seeded tensors one piece at a time: the classifier is never held to be
hashed, so a peer's start-up peak is what it keeps.

Parts are counted: peers in one process (tests, benchmarks) share one
``ModelWeights`` per (model, weights) and a part is freed when no peer holds it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeci_p2p.core.units import ModelSpec
from edgeci_p2p.nn.models import (
    DEFAULT_SEED,
    check_model_name,
    first_conv_name,
    hash_bytes,
    hash_header,
    meta_model,
    seed_tensor,
    seeded_pieces,
    weights_path,
)
from edgeci_p2p.nn.packed import mark, pack_weight

HEAD = "head"
"""The part that holds the classifier (VGG) or fc (ResNet)."""


@dataclass(frozen=True)
class _Slot:
    """One parameter or buffer of the model: where it lives and what it looks like."""

    mod_name: str
    mod: nn.Module
    attr: str
    is_param: bool
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def full(self) -> str:
        return f"{self.mod_name}.{self.attr}" if self.mod_name else self.attr

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()

    def put(self, t: torch.Tensor) -> None:
        if self.is_param:
            self.mod._parameters[self.attr] = nn.Parameter(t, requires_grad=False)
        else:
            self.mod._buffers[self.attr] = t


def part_of(module: str, head_module: str, containers: frozenset[str]) -> str:
    """The part a module (by its dotted name) belongs to."""
    top, _, rest = module.partition(".")
    if top == head_module:
        return HEAD
    if top in containers and rest:
        return f"{top}.{rest.split('.', 1)[0]}"
    return top


class ModelWeights:
    """One model's weights, materialised part by part (see the module docstring)."""

    def __init__(
        self,
        name: str,
        weights: str | Path | None = None,
        *,
        seed: int = DEFAULT_SEED,
        use_hub_cache: bool = True,
    ) -> None:
        self.name = check_model_name(name)
        self.seed = seed
        self.path = weights_path(name, weights, use_hub_cache)
        self.source = str(self.path) if self.path is not None else f"seed:{seed}"
        module: nn.Module = mark(meta_model(name))  # packed convs (nn/packed.py)
        module.eval()
        self.module = module
        self.head_module = "classifier" if hasattr(module, "classifier") else "fc"
        containers = frozenset(
            n for n, m in module.named_children() if isinstance(m, nn.Sequential)
        )
        self._containers = containers
        self._first_conv = first_conv_name(module)
        self._slots: dict[str, list[_Slot]] = {}
        for mod_name, mod in module.named_modules():
            entries = [(a, t, True) for a, t in mod.named_parameters(recurse=False)]
            entries += [(a, t, False) for a, t in mod.named_buffers(recurse=False)]
            for attr, t, is_param in entries:
                slot = _Slot(mod_name, mod, attr, is_param, tuple(t.shape), t.dtype)
                self._slots.setdefault(self.part(mod_name), []).append(slot)
        self.part_bytes: dict[str, int] = {
            p: sum(s.nbytes for s in slots) for p, slots in self._slots.items()
        }
        self._refs: Counter[str] = Counter()
        self._lock = threading.RLock()
        self.fingerprint = self._fingerprint()

    # ---- parts --------------------------------------------------------------------------

    def part(self, module: str) -> str:
        return part_of(module, self.head_module, self._containers)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self._slots)

    @property
    def feature_parts(self) -> tuple[str, ...]:
        return tuple(p for p in self._slots if p != HEAD)

    def parts_for(self, spec: ModelSpec, start: int, stop: int) -> frozenset[str]:
        """The parts units ``[start, stop)`` of ``spec`` run with."""
        out: set[str] = set()
        for unit in spec.units[start:stop]:
            for op in unit.ops:
                if op.module:
                    out.add(self.part(op.module))
        return frozenset(out & set(self._slots))

    def nbytes(self, parts: Iterable[str]) -> int:
        return sum(self.part_bytes.get(p, 0) for p in set(parts))

    @property
    def total_bytes(self) -> int:
        return sum(self.part_bytes.values())

    def loaded(self) -> frozenset[str]:
        with self._lock:
            return frozenset(p for p, n in self._refs.items() if n > 0)

    def acquire(self, part: str) -> None:
        """Hold ``part``: loaded now if nobody in this process held it."""
        with self._lock:
            if self._refs[part] == 0:
                self._load(part)
            self._refs[part] += 1

    def release(self, part: str) -> None:
        """Stop holding ``part``: freed when nobody in this process holds it."""
        with self._lock:
            if self._refs[part] <= 0:
                raise ValueError(f"{self.name}: part {part!r} is not held")
            self._refs[part] -= 1
            if self._refs[part] == 0:
                for s in self._slots[part]:
                    s.put(torch.empty(s.shape, dtype=s.dtype, device="meta"))

    # ---- loading ------------------------------------------------------------------------

    def _file_state(self) -> dict[str, torch.Tensor]:
        """The weights file, memory-mapped: only the tensors read are paged in."""
        assert self.path is not None
        state: dict[str, torch.Tensor]
        try:
            state = torch.load(self.path, weights_only=True, map_location="cpu", mmap=True)
        except RuntimeError:  # an old (non-zip) file cannot be mapped
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        missing = {s.full for slots in self._slots.values() for s in slots} - set(state)
        if missing:
            raise ValueError(
                f"weights file {self.path} does not fit {self.name}: missing {sorted(missing)[:5]}"
            )
        return state

    def _checked(self, s: _Slot, state: dict[str, torch.Tensor]) -> torch.Tensor:
        src = state[s.full]
        if tuple(src.shape) != s.shape:
            raise ValueError(
                f"weights file {self.path} does not fit {self.name}: {s.full} is "
                f"{tuple(src.shape)}, not {s.shape}"
            )
        return src

    @torch.no_grad()
    def _tensor(self, s: _Slot, state: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if state is not None:
            return self._checked(s, state).to(s.dtype).clone()
        t = torch.zeros(s.shape, dtype=s.dtype)
        seed_tensor(s.mod_name, s.mod, s.attr, t, self.seed, self._first_conv)
        return t

    def _load(self, part: str) -> None:
        state = self._file_state() if self.path is not None else None
        for s in self._slots[part]:
            t = self._tensor(s, state)
            if s.attr == "weight" and isinstance(s.mod, nn.Conv2d):
                t = pack_weight(s.mod, t)  # once here, not on every call (nn/packed.py)
            s.put(t)

    def _fingerprint(self) -> str:
        """The whole model's fingerprint, one tensor at a time and none kept: seeded
        tensors are drawn in pieces (:func:`~edgeci_p2p.nn.models.seeded_pieces`), a
        file's are hashed where they are mapped. Nothing as large as VGG-16's fc1
        (411 MB) is ever allocated to be hashed, so start-up peaks at what the peer
        keeps (issue 24: it peaked at 1.13 GB when fc1 was drawn whole)."""
        state = self._file_state() if self.path is not None else None
        slots = {s.full: s for ss in self._slots.values() for s in ss}
        h = hashlib.sha256()
        for full in sorted(slots):
            s = slots[full]
            hash_header(h, full, s.dtype, s.shape)
            if state is None:
                for piece in seeded_pieces(
                    s.mod_name, s.mod, s.attr, s.shape, s.dtype, self.seed, self._first_conv
                ):
                    hash_bytes(h, piece)
                continue
            src = self._checked(s, state)
            # Mapped pages are the file's (the kernel may drop them again), not copies.
            hash_bytes(h, src if src.dtype == s.dtype else src.to(s.dtype))
        return h.hexdigest()


_SHARED: dict[tuple[str, str | None], ModelWeights] = {}
_SHARED_LOCK = threading.Lock()


def shared_weights(name: str, weights: str | None = None) -> ModelWeights:
    """One :class:`ModelWeights` per (model, weights) per process."""
    with _SHARED_LOCK:
        key = (name, weights)
        if key not in _SHARED:
            _SHARED[key] = ModelWeights(name, weights)
        return _SHARED[key]


def state_of(w: ModelWeights) -> dict[str, Any]:
    """The loaded tensors by state_dict name (meta tensors for parts not loaded)."""
    return dict(w.module.state_dict())
