"""The worker's queue of a strip job's pieces (``aio/piece_queue.py``): the worker goes
from one piece to the next without the event loop, in key order, each after the pieces
it reads, and leaves the worker thread to other work when nothing is ready."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgeci_p2p.aio.piece_queue import PieceQueue
from tests.daemons import WAIT_S


def test_the_worker_goes_on_to_the_next_piece_while_the_loop_is_busy() -> None:
    # The loop thread blocks (as a capped peer's loop waits for its quota) until the
    # second piece has run: a worker that needs the loop to hand it over never runs it.
    second_ran, gate = threading.Event(), threading.Event()

    async def main() -> list[bool]:
        with ThreadPoolExecutor(1) as ex:
            q = PieceQueue(asyncio.get_running_loop(), ex)
            a = q.push((0,), gate.wait, WAIT_S)  # still running when the second comes
            b = q.push((1,), second_ran.set)
            gate.set()
            blocked = second_ran.wait(WAIT_S)  # on the loop thread
            await asyncio.gather(a.future, b.future)
            return [blocked, a.went_on, b.continued, b.went_on]

    assert asyncio.run(main()) == [True, True, True, False]


def test_pieces_run_by_key_and_after_the_pieces_they_read() -> None:
    order: list[str] = []
    gate = threading.Event()

    async def main() -> None:
        with ThreadPoolExecutor(1) as ex:
            q = PieceQueue(asyncio.get_running_loop(), ex)
            # The first holds the worker while the rest are queued behind it.
            first = q.push((9,), lambda: gate.wait(WAIT_S) and order.append("first"))
            middle = q.push((0, 1), order.append, "middle")
            q.push((1, 0), order.append, "next edge", after=[middle])
            q.push((0, 0), order.append, "edge")
            q.push((1, 1), order.append, "next middle")
            last = q.push((2,), order.append, "fold")
            gate.set()
            await last.future
            assert first.future.result()[0] is not False

    asyncio.run(main())
    # The first piece was running; then lowest key first ("next edge" waits for "middle"
    # whatever its key).
    assert order == ["first", "edge", "middle", "next edge", "next middle", "fold"]


def test_a_piece_waiting_for_one_still_queued_runs_after_it_even_with_a_lower_key() -> None:
    order: list[str] = []
    gate = threading.Event()

    async def main() -> None:
        with ThreadPoolExecutor(1) as ex:
            q = PieceQueue(asyncio.get_running_loop(), ex)
            q.push((0,), lambda: gate.wait(WAIT_S))
            slow = q.push((5,), order.append, "read")
            reader = q.push((1,), order.append, "reader", after=[slow])
            q.push((3,), order.append, "other")
            gate.set()
            await reader.future

    asyncio.run(main())
    assert order == ["other", "read", "reader"]


def test_an_idle_queue_leaves_the_worker_to_other_work_and_wakes_on_a_push() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as ex:
            q = PieceQueue(loop, ex)
            await q.push((0,), lambda: "one").future
            # Nothing ready: the worker is free for another request's work.
            other = await loop.run_in_executor(ex, lambda: "other")
            two = await q.push((0,), lambda: "two").future
            return ["one", other, two[0]]

    assert asyncio.run(main()) == ["one", "other", "two"]


def test_a_failed_piece_fails_its_future_and_a_closed_queue_runs_nothing_more() -> None:
    ran: list[str] = []
    gate = threading.Event()

    def boom() -> None:
        raise ValueError("bad rows")

    async def main() -> None:
        with ThreadPoolExecutor(1) as ex:
            q = PieceQueue(asyncio.get_running_loop(), ex)
            hold = q.push((0,), lambda: gate.wait(WAIT_S))
            bad = q.push((1,), boom)
            with pytest.raises(ValueError, match="bad rows"):
                gate.set()
                await bad.future
            assert hold.future.done()
            gate.clear()
            q.push((0,), lambda: gate.wait(WAIT_S))
            q.push((1,), ran.append, "dropped")
            q.close()  # the job failed: what has not started is not run
            gate.set()
        # The executor has shut down, so the worker has finished with the queue.

    asyncio.run(main())
    assert ran == []


def test_a_queue_on_a_shut_worker_refuses_the_piece() -> None:
    async def main() -> None:
        ex = ThreadPoolExecutor(1)
        ex.shutdown()
        q = PieceQueue(asyncio.get_running_loop(), ex)
        with pytest.raises(RuntimeError):
            q.push((0,), lambda: None)
        # Nothing stays queued or counted as running: a later push tries again.
        with pytest.raises(RuntimeError):
            q.push((0,), lambda: None)

    asyncio.run(main())
