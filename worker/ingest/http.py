"""The ingest's HTTP side before a request reaches the app, for a server on the open internet: uvicorn's
httptools protocol with the bounds uvicorn leaves out, and the TLS settings when the ingest serves HTTPS.

- A request's line and headers must arrive within `read_timeout` seconds of the connection, or of the first
  byte after the previous answer on a kept-alive connection: else 408 and the connection closes. (uvicorn
  closes a kept-alive connection idle for 5 s, but waits for unfinished headers forever.)
- They may take at most `MAX_HEADER_BYTES` (request line, header names and values): else 431 and close.
  (httptools has no limit of its own: uvicorn took 2 MB.)
- At most `max_idle` connections wait for a request (just connected, idle between requests, or sending
  headers); one more closes the one that has waited longest, so a flood of idle connections cannot keep a
  sender out (its connection is the newest). Each holds at most `MAX_HEADER_BYTES` of headers: that bounds
  the memory waiting connections take. The body's own bounds are in `worker/ingest/bounds.py`.
Each connection closed so is reported to `on_close(reason, client)` (counted and logged by the server).

uvicorn calls the protocol's parser callbacks; this subclass is tied to uvicorn's httptools implementation of
the version in the lock file, and tests/unit/ingest/test_http.py runs it on real sockets.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES: Final = 16 * 1024
# TLS 1.2 with forward secrecy and AEAD only (TLS 1.3's suites are all of that kind and not changed here).
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
_STATUS: Final = {400: b"400 Bad Request", 408: b"408 Request Timeout", 431: b"431 Request Header Fields Too Large"}

OnClose = Callable[[str, str | None], None]  # (reason, client address)


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop the parser; the protocol answers 431."""


@dataclass
class Limits:
    """What all connections of one server share: the bounds, and the connections waiting for a request."""

    read_timeout: float
    max_idle: int
    on_close: OnClose
    waiting: OrderedDict[BoundedHttpTools, None] = field(default_factory=OrderedDict)  # oldest first


class BoundedHttpTools(HttpToolsProtocol):
    """Use `BoundedHttpTools.bounded(...)`: a subclass for one server, with its `Limits`."""

    limits: ClassVar[Limits]

    @classmethod
    def bounded(cls, read_timeout: float, max_idle: int, on_close: OnClose) -> type[BoundedHttpTools]:
        limits = Limits(read_timeout, max_idle, on_close)
        return cast(type[BoundedHttpTools], type(cls.__name__, (cls,), {"limits": limits}))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait()
        if len(self.limits.waiting) > self.limits.max_idle:
            self._close_oldest()

    def data_received(self, data: bytes) -> None:
        """uvicorn's, without upgrades (the ingest serves none), answering 431 for headers over the limit."""
        if self._deadline is None and self in self.limits.waiting:  # the first byte of the next request
            self._deadline = self.loop.call_later(self.limits.read_timeout, self._refuse, 408, "header_timeout")
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if self._too_large:
                self._refuse(431, "headers_too_large")
            else:
                self._refuse(400, "bad_request")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Kept alive and no pipelined request started: waiting again (uvicorn's keep-alive timer runs meanwhile).
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.limits.waiting[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    # ---- the bounds ----------------------------------------------------------------------------------------

    def _wait(self) -> None:
        self.limits.waiting[self] = None
        self._deadline = self.loop.call_later(self.limits.read_timeout, self._refuse, 408, "header_timeout")

    def _stop_waiting(self) -> None:
        self.limits.waiting.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._too_large = True
            raise _HeadersTooLarge

    def _close_oldest(self) -> None:
        oldest = next(iter(self.limits.waiting))
        oldest._stop_waiting()
        oldest.transport.close()
        self.limits.on_close("evicted", _host(oldest.client))

    def _refuse(self, status: int, reason: str) -> None:
        """Answer `status` with no body, close the connection, and report it."""
        self._stop_waiting()
        if self.transport.is_closing():
            return
        self.transport.write(b"HTTP/1.1 " + _STATUS[status] + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.close()
        self.limits.on_close(reason, _host(self.client))


def _host(client: tuple[str, int] | None) -> str | None:
    return client[0] if client else None


def tls_context(_config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's context for the configured certificate and key, limited to TLS 1.2 and later with ECDHE and
    AEAD ciphers (uvicorn before 0.48 offered TLS 1.2 with CBC-SHA1 only), without TLS compression."""
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context
