"""What one request may hold, and for how long, once its headers are in (the headers have their own bounds in
`worker/ingest/http.py`): the ingest's defence against slow, unfinished and too many requests.

- A body must arrive within `read_timeout` seconds of the headers, else `ReadTimeout` (408).
- At most `max_reads` bodies are read at once, each up to the body limit: that bounds the memory bodies take.
  One read more ends the read that started first (its deadline moves to now: it answers 408), so slow senders
  holding every slot cannot keep a fast one out: a fast read is done long before it would be the oldest.
- The body goes into the signature check chunk by chunk, as it arrives, and stays a list of chunks: it is
  joined only once the signature matched, so a flood of unsigned bodies costs no copy of each.
- At most `max_waiting` requests wait for Kafka's acknowledgement; one more is `Busy` (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

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
        self._reads: OrderedDict[object, asyncio.Timeout] = OrderedDict()  # oldest first
        self.waiting = 0

    async def read(self, receive: Receive, limit: int, verifier: Verifier | None) -> list[bytes]:
        """The body's chunks, each given to `verifier` as it arrives. Raises `ReadTimeout`, `BodyTooLarge` or
        `ClientGone`."""
        slot = object()
        try:
            async with asyncio.timeout(self.read_timeout) as deadline:
                self._reads[slot] = deadline
                if len(self._reads) > self.max_reads:
                    _, oldest = self._reads.popitem(last=False)
                    oldest.reschedule(asyncio.get_running_loop().time())
                    metrics.READS_EVICTED.inc()
                return await _chunks(receive, limit, verifier)
        except TimeoutError:
            raise ReadTimeout from None
        finally:
            self._reads.pop(slot, None)

    @contextmanager
    def wait_for_kafka(self) -> Iterator[None]:
        """Hold a place among the requests waiting for Kafka; raises `Busy` when there is none."""
        if self.waiting >= self.max_waiting:
            raise Busy
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1


async def _chunks(receive: Receive, limit: int, verifier: Verifier | None) -> list[bytes]:
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
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks
