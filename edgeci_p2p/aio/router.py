"""Message type -> handler, for every message a connection delivers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from edgeci_p2p.aio.connection import Connection
from edgeci_p2p.wire.messages import Message

log = logging.getLogger("edgeci.peer")

M = TypeVar("M", bound=Message)
Handler = Callable[[Connection, Any], None]
"""Handles one message; must not block (it spawns a task for anything that waits)."""


class Router:
    """Routes each received message to the handler registered for its type."""

    def __init__(self) -> None:
        self._handlers: dict[type[Message], Handler] = {}

    def on(self, kind: type[M], handler: Callable[[Connection, M], None]) -> None:
        if kind in self._handlers:
            raise ValueError(f"{kind.__name__} already has a handler")
        self._handlers[kind] = handler

    def route(self, conn: Connection, msg: Message) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:
            log.debug("ignoring %s from %s", msg.TYPE, conn.peer.node_id)
            return
        handler(conn, msg)
