"""worker.logs: one JSON object per line, for structlog events and standard-library records alike (issue 20,
item 7: uvicorn's and librdkafka's exceptions were printed as an unformatted `exc_info` tuple)."""

from __future__ import annotations

import logging

import orjson
import pytest

from worker import logs


def test_a_standard_library_exception_is_formatted_in_the_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError as error:
        logging.getLogger("a.library").error("Exception in ASGI application\n", exc_info=error)
    (line,) = capsys.readouterr().out.splitlines()
    entry = orjson.loads(line)
    assert entry["logger"] == "a.library" and entry["level"] == "error"
    assert "exc_info" not in entry
    assert entry["exception"].startswith("Traceback") and "ZeroDivisionError: division by zero" in entry["exception"]
