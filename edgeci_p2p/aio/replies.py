"""Replies this node awaits, keyed by ``(request id, tile id)``, each from one node.

Tile results, strip results, head results and forwarded requests' answers are all
awaited the same way: a future per key, failed together when their node goes
away, when that node reports an error for their request, or when the request is
cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")
Key = tuple[str, int]


@dataclass
class _Awaited(Generic[R]):
    future: asyncio.Future[R]
    node: str


class Replies(Generic[R]):
    """The table of awaited replies of one kind."""

    def __init__(self) -> None:
        self._waiting: dict[Key, _Awaited[R]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    @contextmanager
    def awaiting(self, key: Key, node: str) -> Iterator[asyncio.Future[R]]:
        """A future for the reply ``key`` from ``node``, forgotten when the block ends."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting[key] = _Awaited(fut, node)
        try:
            yield fut
        finally:
            if self._waiting.get(key) is not None and self._waiting[key].future is fut:
                del self._waiting[key]

    def resolve(self, key: Key, value: R) -> bool:
        """Deliver a reply; False when nobody awaits ``key`` (late or unknown)."""
        got = self._waiting.get(key)
        if got is None:
            return False
        if not got.future.done():
            got.future.set_result(value)
        return True

    def fail(self, key: Key, error: BaseException) -> bool:
        """The reply ``key`` will not come: its awaiter gets ``error``."""
        got = self._waiting.get(key)
        if got is None:
            return False
        if not got.future.done():
            got.future.set_exception(error)
        return True

    def fail_node(self, node: str, error: BaseException) -> None:
        """``node`` went away: everything awaited from it fails."""
        for got in list(self._waiting.values()):
            if got.node == node and not got.future.done():
                got.future.set_exception(error)

    def fail_request_from(self, request_id: str, node: str, error: BaseException) -> None:
        """``node`` reported an error for ``request_id``: only what it was running fails
        (the request lives on elsewhere)."""
        for (rid, _), got in list(self._waiting.items()):
            if rid == request_id and got.node == node and not got.future.done():
                got.future.set_exception(error)

    def fail_request(self, request_id: str, error: BaseException) -> None:
        """Everything awaited for ``request_id`` fails, whoever runs it."""
        for (rid, _), got in list(self._waiting.items()):
            if rid == request_id and not got.future.done():
                got.future.set_exception(error)

    def cancel_request(self, request_id: str) -> None:
        for (rid, _), got in list(self._waiting.items()):
            if rid == request_id:
                got.future.cancel()

    def fail_all(self, error: BaseException) -> None:
        for got in list(self._waiting.values()):
            if not got.future.done():
                got.future.set_exception(error)
