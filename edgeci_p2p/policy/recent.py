"""Bounded memories that forget their oldest entries first."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class RecentSet(Generic[K]):
    """A set of at most ``size`` keys; adding one more forgets the oldest.

    For ids that matter for a while (cancelled requests, delivered auctions): a
    plain set trimmed with ``set.pop()`` would forget an arbitrary one, possibly
    the one just added.
    """

    def __init__(self, size: int = 4096) -> None:
        if size < 1:
            raise ValueError("a RecentSet holds at least one key")
        self.size = size
        self._keys: dict[K, None] = {}

    def add(self, key: K) -> None:
        self._keys.pop(key, None)  # re-adding makes it the newest
        self._keys[key] = None
        while len(self._keys) > self.size:
            del self._keys[next(iter(self._keys))]

    def discard(self, key: K) -> None:
        self._keys.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[K]:
        return iter(self._keys)
