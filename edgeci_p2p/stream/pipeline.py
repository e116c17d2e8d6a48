"""Frames in flight: keep up to K infer requests outstanding on ONE client connection.

The client matches replies to requests by id, so K frames can be on the wire at once and
the cluster works on several frames together (one frame's head on the auctioneer while the
next frame's first blocks run on the peers). Results are handed on in frame order, as a
display or a video writer wants them, while latency is measured per frame from capture to
reply, whatever order the replies come back in.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from edgeci_p2p.aio.client import Client
from edgeci_p2p.nn.images import to_input
from edgeci_p2p.stream.sources import FrameSource
from edgeci_p2p.stream.stats import StreamStats
from edgeci_p2p.wire.messages import InferResult

ENCODINGS = ("jpeg", "png", "tensor")
Payload = bytes | np.ndarray[Any, Any]


@dataclass(frozen=True)
class StreamConfig:
    model: str = "resnet34"
    strategy: str = "edgeci"
    frames: int = 30
    """Frames to send; 0 = until the source ends."""
    in_flight: int = 2
    encoding: str = "jpeg"
    """``jpeg``/``png``: the frame's encoded bytes (the daemon decodes and preprocesses);
    ``tensor``: the preprocessed 1x3xHxW float32 input (no decoding on the auctioneer)."""
    size: str = "224"
    """``224`` (resize and centre crop) or ``native``."""

    def __post_init__(self) -> None:
        if self.in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, not {self.in_flight}")
        if self.frames < 0:
            raise ValueError(f"frames must be 0 (until the source ends) or more, not {self.frames}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, not {self.encoding!r}")


@dataclass(frozen=True)
class FrameResult:
    index: int
    image: Image.Image
    payload: Payload
    """Exactly what was sent, so a caller can reproduce the model input."""
    result: InferResult
    started: float
    ended: float

    @property
    def latency_s(self) -> float:
        return self.ended - self.started


def encode(img: Image.Image, encoding: str, size: str = "224") -> Payload:
    if encoding == "tensor":
        arr: np.ndarray[Any, Any] = to_input(img, size).numpy()
        return arr
    buf = io.BytesIO()
    if encoding == "jpeg":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


async def stream(
    client: Client,
    source: FrameSource,
    config: StreamConfig,
    on_frame: Callable[[FrameResult, StreamStats], None] | None = None,
    stats: StreamStats | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> StreamStats:
    """Send frames from ``source`` with up to ``config.in_flight`` outstanding; call
    ``on_frame`` for each result in frame order. The first failed frame cancels the rest
    and its error propagates."""
    stats = stats if stats is not None else StreamStats()
    slots = asyncio.Semaphore(config.in_flight)
    done: dict[int, FrameResult] = {}
    next_out = 0

    async def one(index: int, img: Image.Image, payload: Payload, started: float) -> None:
        nonlocal next_out
        try:
            res = await client.infer(
                payload, model=config.model, strategy=config.strategy, size=config.size
            )
        finally:
            slots.release()
        ended = clock()
        stats.record(started, ended)
        done[index] = FrameResult(index, img, payload, res, started, ended)
        while next_out in done:
            frame = done.pop(next_out)
            next_out += 1
            if on_frame is not None:
                on_frame(frame, stats)

    try:
        async with asyncio.TaskGroup() as tg:
            index = 0
            while config.frames == 0 or index < config.frames:
                await slots.acquire()
                # Grab the frame only when a slot is free: a live camera is then sampled at
                # the rate the cluster sustains instead of queueing stale frames.
                img = await asyncio.to_thread(source.read)
                if img is None:
                    slots.release()
                    break
                started = clock()
                payload = await asyncio.to_thread(encode, img, config.encoding, config.size)
                tg.create_task(one(index, img, payload, started))
                index += 1
    except ExceptionGroup as group:
        # Callers want the frame's own error (ClientError, ConnectionLost), not a group.
        raise _first(group) from None
    return stats


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    e: BaseException = group
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e
