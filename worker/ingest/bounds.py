"""What one request may hold, and for how long, once its headers are in (the headers have their own bounds in
`worker/ingest/http.py`): the ingest's defence against slow, unfinished and too many requests.

- A body must arrive within `read_timeout` seconds of the headers, else `ReadTimeout` (408). One sweeper task
  ends the reads past their deadline, at most `read_timeout / 10` (and a second) late: a request whose body is
  there at once costs two dictionary operations, not a timer of its own.
- At most `max_reads` bodies are read at once, each up to the body limit: that bounds the memory bodies take.
  One read more ends the read that started first (it answers 408), so slow senders holding every slot cannot
  keep a fast one out: a fast read is done long before it would be the oldest.
- The body goes into the signature check chunk by chunk, as it arrives, and stays a list of chunks: it is
  joined only once the signature matched, so a flood of unsigned bodies costs no copy of each.
- At most `max_waiting` requests wait for Kafka's acknowledgement; one more is `Busy` (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from starlette.types import Receive

from worker.ingest import metrics
from worker.ingest.secrets import Verifier


class ReadTimeout(Exception):
    """The body did not arrive within the deadline, or a newer read took this one's slot."""


class BodyTooLarge(Exception):
    """The body grew past the limit while it was read (the rest is never read)."""


class ClientGone(Exception):
    """The client disconnected before its body was complete."""


class Busy(Exception):
    """As many requests as allowed already wait for Kafka."""


class Bounds:
    def __init__(self, read_timeout: float, max_reads: int, max_waiting: int) -> None:
        self.read_timeout, self.max_reads, self.max_waiting = read_timeout, max_reads, max_waiting
        self._reads: OrderedDict[asyncio.Task[Any], float] = OrderedDict()  # reading task -> deadline; oldest first
        self._ended: set[asyncio.Task[Any]] = set()  # reads cancelled here (past their deadline, or evicted)
        self._sweeper: asyncio.Task[None] | None = None
        self.waiting = 0

    async def read(self, receive: Receive, limit: int, verifier: Verifier | None, keep: bool = True) -> list[bytes]:
        """The body's chunks, each given to `verifier` as it arrives (none kept with `keep` False: a refused body
        read only to be dropped). Raises `ReadTimeout`, `BodyTooLarge` or `ClientGone`. Must run in its request's
        own task (it is cancelled to end the read)."""
        task, loop = asyncio.current_task(), asyncio.get_running_loop()
        assert task is not None
        self._reads[task] = loop.time() + self.read_timeout
        if len(self._reads) > self.max_reads:
            self._end(next(iter(self._reads)))
            metrics.READS_EVICTED.inc()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep())
        try:
            return await _chunks(receive, limit, verifier, keep)
        except asyncio.CancelledError:
            if task not in self._ended:
                raise  # not ours: the server stops
            task.uncancel()
            raise ReadTimeout from None
        finally:
            self._reads.pop(task, None)
            self._ended.discard(task)

    def close(self) -> None:
        """Stop the sweeper (the reads in progress keep their tasks)."""
        if self._sweeper is not None:
            self._sweeper.cancel()

    def _end(self, task: asyncio.Task[Any]) -> None:
        del self._reads[task]
        self._ended.add(task)
        task.cancel()

    async def _sweep(self) -> None:
        """End the reads past their deadline; the oldest come first, so each pass stops at the first in time."""
        loop, tick = asyncio.get_running_loop(), min(1.0, self.read_timeout / 10)
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            while self._reads and (oldest := next(iter(self._reads.items())))[1] <= now:
                self._end(oldest[0])

    def wait_for_kafka(self) -> _Waiting:
        """A place among the requests waiting for Kafka, held for a `with`; entering raises `Busy` when there is
        none."""
        return _Waiting(self)


class _Waiting:
    """A class, not a generator-based context manager: this is on every stored request's path."""

    __slots__ = ("_bounds",)

    def __init__(self, bounds: Bounds) -> None:
        self._bounds = bounds

    def __enter__(self) -> None:
        if self._bounds.waiting >= self._bounds.max_waiting:
            raise Busy
        self._bounds.waiting += 1

    def __exit__(self, *_exc: object) -> None:
        self._bounds.waiting -= 1


async def _chunks(receive: Receive, limit: int, verifier: Verifier | None, keep: bool) -> list[bytes]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            if verifier is not None:
                verifier.update(chunk)
            if keep:
                chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks
