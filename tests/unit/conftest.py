"""Input builders shared by the unit tests of every area, as session fixtures (seed examples, structured and
binary mode).

Convention of the builders: an override whose value is `...` (Ellipsis) removes that key.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.processing.decode import decode
from worker.processing.models import Event

ROOT = Path(__file__).resolve().parents[2]
SEED_DIR = ROOT / "tests" / "fixtures" / "seed-events"

Headers = list[tuple[str, bytes | str | None]]
Structured = Callable[..., bytes]
Binary = Callable[..., tuple[bytes, Headers]]


def _apply(target: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    for key, value in (overrides or {}).items():
        if value is ...:
            target.pop(key, None)
        else:
            target[key] = value
    return target


@pytest.fixture(scope="session")
def seed_dir() -> Path:
    return SEED_DIR


@pytest.fixture(scope="session")
def seed_bytes() -> dict[str, bytes]:
    """The four verbatim seed examples, by file stem ("group-created", ...)."""
    return {path.stem: path.read_bytes() for path in sorted(SEED_DIR.glob("*.json"))}


@pytest.fixture(scope="session")
def seed_event(seed_bytes: dict[str, bytes]) -> Callable[..., dict[str, Any]]:
    """A fresh (deep-copied) dict of a seed example, with envelope / data overrides applied."""

    def build(
        name: str = "group-users-modified",
        envelope: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        event: dict[str, Any] = copy.deepcopy(orjson.loads(seed_bytes[name]))
        if data is not None:
            _apply(event["data"], data)
        return _apply(event, envelope)

    return build


@pytest.fixture(scope="session")
def structured(seed_event: Callable[..., dict[str, Any]]) -> Structured:
    """Structured-mode value bytes of a (modified) seed example."""

    def build(name: str = "group-users-modified", envelope: Any = None, data: Any = None) -> bytes:
        return orjson.dumps(seed_event(name, envelope, data))

    return build


@pytest.fixture(scope="session")
def binary(seed_event: Callable[..., dict[str, Any]]) -> Binary:
    """Binary mode of a (modified) seed example: (data bytes, ce_* headers as confluent-kafka gives them)."""

    def build(name: str = "group-users-modified", envelope: Any = None, data: Any = None) -> tuple[bytes, Headers]:
        event = seed_event(name, envelope, data)
        body = event.pop("data")
        headers: Headers = [(f"ce_{key}", str(value).encode()) for key, value in event.items()]
        headers.append(("content-type", b"application/json"))
        return orjson.dumps(body), headers

    return build


@pytest.fixture(scope="session")
def kafka_headers() -> Callable[[Mapping[str, bytes]], Headers]:
    """A cloudevents SDK KafkaMessage headers dict as the list of (str, bytes) tuples confluent-kafka yields."""

    def convert(headers: Mapping[str, bytes]) -> Headers:
        return [(str(name), bytes(value)) for name, value in headers.items()]

    return convert


@pytest.fixture(scope="session")
def decoded() -> Callable[..., Event]:
    """decode() that must give an Event (shows the Rejected/Skipped otherwise)."""

    def run(value: bytes | None, headers: Any = None) -> Event:
        result = decode(value, headers)
        assert isinstance(result, Event), result
        return result

    return run
