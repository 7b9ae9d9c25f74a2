"""worker.ingest.http on real sockets (uvicorn on 127.0.0.1, a trivial app; issue 20, item 2): headers that never
finish get 408 within the read timeout, an idle connection too; headers over the limit get 431; idle connections
over the bound close the oldest, so a sender still gets in; a kept-alive connection gets the same deadline for its
next request; and the TLS context refuses what it should."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from worker.ingest.http import MAX_HEADER_BYTES, TLS12_CIPHERS, BoundedHttpTools, tls_context
from worker.local.stack import HOST, free_port

READ_TIMEOUT = 0.5
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@dataclass
class Server:
    port: int
    closed: list[str] = field(default_factory=list)

    def connect(self) -> socket.socket:
        return socket.create_connection((HOST, self.port), timeout=5)

    def answer(self, sock: socket.socket) -> bytes:
        """Everything the server sends until it closes the connection."""
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server(free_port())
    protocol = BoundedHttpTools.bounded(READ_TIMEOUT, 5, lambda reason, _client: server.closed.append(reason))
    config = uvicorn.Config(ok, host=HOST, port=server.port, http=protocol, ws="none", log_config=None, lifespan="off")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    for _ in range(200):
        if running.started:
            break
        time.sleep(0.02)
    yield server
    running.should_exit = True
    thread.join(10)


def test_headers_that_never_finish_get_408_within_the_read_timeout(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /webhooks/qlik HTTP/1.1\r\nHost: x\r\nContent-Ty")
        started = time.monotonic()
        answer = server.answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer
    assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + 1
    assert server.closed == ["header_timeout"]


def test_a_connection_that_sends_nothing_is_closed_after_the_read_timeout(server: Server) -> None:
    with server.connect() as sock:
        assert server.answer(sock).startswith(b"HTTP/1.1 408 ")


def test_headers_over_the_limit_get_431(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n")
        assert server.answer(sock).startswith(b"HTTP/1.1 431 ")
    assert server.closed == ["headers_too_large"]
    with server.connect() as sock:  # headers under the limit are fine
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEADER_BYTES // 2) + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")


def test_idle_connections_over_the_bound_close_the_oldest_so_a_sender_gets_in(server: Server) -> None:
    idle = [server.connect() for _ in range(20)]
    try:
        with server.connect() as sock:
            sock.sendall(REQUEST)
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        assert server.closed.count("evicted") >= 15
        assert idle[0].recv(100) == b"", "the oldest idle connection was closed"
    finally:
        for sock in idle:
            sock.close()


def test_a_kept_alive_connection_gets_the_deadline_for_its_next_request(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(REQUEST)
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        sock.sendall(REQUEST)
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET / HTTP/1.1\r\nHo")
        assert server.answer(sock).startswith(b"HTTP/1.1 408 ")


def test_the_tls_context_takes_tls_1_2_with_forward_secrecy_and_aead_only() -> None:
    def default() -> ssl.SSLContext:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    context = tls_context(uvicorn.Config(ok), default)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12), TLS12_CIPHERS
    assert not any("SHA1" in c["description"] or c["name"].endswith("-SHA") for c in tls12)
    assert context.options & ssl.OP_NO_COMPRESSION
