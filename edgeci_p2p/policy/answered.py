"""The answers a peer remembers, so that a client's re-sent request is not run twice.

A client whose entry peer died re-sends its request, under the same request id, to
another peer (``aio/client.py``). If that peer had in fact finished the request (the
dead entry peer had forwarded it there, or the connection broke after the answer
left), it answers from this memory instead of running the network again. Anything
not remembered simply runs again: inference has no side effects.

A remembered answer is found only by the same request id *and* the same request
content (model, options, input bytes): ids are chosen by clients, and two clients
may well both use ``"1"``; the content digest keeps one client from ever getting
another's answer. A forwarded request's id is the client's id plus ``@`` and a
suffix (``aio/forwarder.py``); with ``hops`` > 0 the memory keys it by the client's id.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from edgeci_p2p.wire.messages import InferRequest

V = TypeVar("V")

ANSWERS_KEPT = 64
"""Answers remembered at most (an answer is a few KB: the logits and the plan)."""
ANSWER_TTL_S = 120.0
"""Seconds an answer is remembered: a client re-sends within its own timeout."""


@dataclass(frozen=True)
class AnswerKey:
    request_id: str
    """The client's request id (a forward's suffix removed)."""
    digest: str
    """sha256 of what determines the answer: model, options and input."""


def client_request_id(req: InferRequest) -> str:
    """The id the client chose: a forwarded request carries ``<id>@<suffix>``."""
    if req.hops > 0 and "@" in req.request_id:
        return req.request_id.rpartition("@")[0]
    return req.request_id


def answer_key(req: InferRequest) -> AnswerKey:
    h = hashlib.sha256()
    options = (req.model, req.strategy, req.size, req.top_k, req.verify, bool(req.trace))
    h.update(repr(options).encode())
    if req.image is not None:
        h.update(b"image\0")
        h.update(req.image)
    elif req.tensor is not None:
        arr = np.ascontiguousarray(req.tensor)
        h.update(f"tensor\0{arr.dtype.str}{arr.shape}\0".encode())
        h.update(arr.tobytes())
    return AnswerKey(client_request_id(req), h.hexdigest())


class AnsweredMemory(Generic[V]):
    """At most ``size`` answers, each for ``ttl`` seconds, the oldest forgotten first."""

    def __init__(self, size: int = ANSWERS_KEPT, ttl: float = ANSWER_TTL_S) -> None:
        if size < 1 or ttl <= 0:
            raise ValueError("an AnsweredMemory holds at least one answer for some time")
        self.size, self.ttl = size, ttl
        self._answers: OrderedDict[AnswerKey, tuple[float, V]] = OrderedDict()

    def remember(self, key: AnswerKey, answer: V, now: float) -> None:
        self._answers.pop(key, None)
        self._answers[key] = (now, answer)
        self._forget(now)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)

    def recall(self, key: AnswerKey, now: float) -> V | None:
        """The answer remembered for ``key``, or None (never one older than ``ttl``)."""
        self._forget(now)
        got = self._answers.get(key)
        return None if got is None else got[1]

    def _forget(self, now: float) -> None:
        while self._answers:
            oldest = next(iter(self._answers.values()))[0]
            if now - oldest <= self.ttl:
                return
            self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)
