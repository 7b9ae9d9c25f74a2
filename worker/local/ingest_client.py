"""Sending webhooks to the ingest as Qlik Cloud does (a signed `POST`), for `make demo`, the `curl` line
`make run` prints, the tests and the bench; and the ingest as a child process next to an embedded stack.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from worker.ingest.rules import SIGNATURE_HEADER
from worker.ingest.secrets import sign
from worker.ingest.server import UMS_PATH, WEBHOOK_PATH
from worker.local.samples import Sample
from worker.local.stack import HOST


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, object]
    headers: Mapping[str, str]  # names lower-cased


def post(
    url: str,
    body: bytes,
    secret: str | None,
    content_type: str = "application/json",
    timeout: float = 30,
    header: str = SIGNATURE_HEADER,
) -> Answer:
    """One webhook: `body` as it is, signed with `secret` in `header` (None: no signature header)."""
    headers = {"Content-Type": content_type}
    if secret is not None:
        headers[header] = sign(body, secret)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, _json_object(response.read()), _lower(response.headers.items()))
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, orjson.loads(error.read() or b"{}"), _lower(error.headers.items()))


def _json_object(body: bytes) -> dict[str, object]:
    """A JSON answer as it is; any other (Seismic's text/plain challenge) as `{"text": ...}`."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"text": body.decode("utf-8", "replace")}
    return answer if isinstance(answer, dict) else {"json": answer}


def _lower(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def curl_command(url: str, path: Path, secret: str, content_type: str) -> str:
    """A shell line that posts the file at `path` exactly as it is, signed (what Qlik would send)."""
    parts = [
        "curl", "-sS", "-i", "-X", "POST", url,
        "-H", f"Content-Type: {content_type}",
        "-H", f"Qlik-Signature: {sign(path.read_bytes(), secret)}",
        "--data-binary", f"@{path}",
    ]  # fmt: skip
    return shlex.join(parts)


def webhook_form(sample: Sample) -> tuple[bytes, str]:
    """(body, content type) of a sample as a webhook carries it: structured samples as they are; a binary-mode
    CloudEvent (its attributes in `ce_` headers) folded into one structured event, as Qlik delivers it."""
    headers = {name: value.decode() if isinstance(value, bytes) else value or "" for name, value in sample.headers}
    attributes = {name[3:]: value for name, value in headers.items() if name.startswith("ce_")}
    if not attributes:
        return sample.value, headers.get("content-type") or "application/json"
    return orjson.dumps({**attributes, "data": orjson.loads(sample.value)}), "application/cloudevents+json"


@dataclass
class IngestProcess:
    """`python -m worker ingest` as a child process (its log in a file, or on our stdout), stopped with SIGTERM."""

    env: dict[str, str]
    port: int
    log_path: Path | None
    tls: bool = False  # it serves HTTPS (WORKER_INGEST_TLS_* in env)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def webhook_url(self) -> str:
        return self.url + WEBHOOK_PATH

    @property
    def ums_url(self) -> str:
        return self.url + UMS_PATH

    def start(self, timeout: float = 60) -> IngestProcess:
        env = {**os.environ, **self.env, "WORKER_INGEST_PORT": str(self.port)}
        with self.log_path.open("ab") if self.log_path else contextlib.nullcontext() as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker", "ingest"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches its parent, which stops it (one signal: a clean drain)
            )
        deadline = time.monotonic() + timeout
        while self.status("/readyz") != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the ingest did not become ready (log: {self.log_path or 'above'})")
            time.sleep(0.2)
        return self

    def status(self, path: str) -> int:
        # Our own child on 127.0.0.1, whatever certificate it was given (a test's self-signed one).
        context = ssl._create_unverified_context() if self.tls else None
        try:
            with urllib.request.urlopen(self.url + path, timeout=5, context=context) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()
