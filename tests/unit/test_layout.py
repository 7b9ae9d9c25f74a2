"""The package layout's rules (README "Layout"): dependencies point one way, and `worker/processing` is pure of
the service clients, so its rules run and are tested without Kafka, Redis or Prometheus."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parents[2] / "worker"

# What each part of `worker/` may import of the others (`worker` itself, for `__version__`, is open to all):
# cli -> local, consumer, ops -> ingest, state -> config -> processing; logs is a leaf anyone may use.
# The upstream jobs (issue 21): cli, local -> upstream -> ingest, state, qlik -> config; the ingest records its
# last accepted times in Redis through state.
ALLOWED: dict[str, set[str]] = {
    "processing": set(),
    "config": {"processing"},
    "logs": set(),
    "state": {"config", "processing"},
    "ingest": {"config", "logs", "processing", "state"},
    "qlik": {"config", "logs", "processing"},
    "upstream": {"config", "logs", "processing", "state", "ingest", "qlik"},
    "consumer": {"config", "logs", "processing", "state"},
    "ops": {"config", "logs", "processing", "state"},
    "local": {"config", "logs", "processing", "ingest", "qlik", "upstream"},
    "cli": {"config", "logs", "processing", "state", "ingest", "consumer", "ops", "local", "qlik", "upstream"},
    "__main__": {"cli"},
    "__init__": set(),
}
CLIENTS = {"confluent_kafka", "redis", "hiredis", "prometheus_client", "starlette", "uvicorn", "httpx"}


def imports(path: Path) -> Iterator[str]:
    """Every module a file imports, at any depth of the file (function-level imports included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            if node.module == "worker":
                yield from (f"worker.{alias.name}" for alias in node.names)


def area(path: Path) -> str:
    relative = path.relative_to(WORKER).with_suffix("")
    return relative.parts[0]


SOURCES = sorted(WORKER.rglob("*.py"))


def test_every_module_belongs_to_a_known_part() -> None:
    assert {area(path) for path in SOURCES} == set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(WORKER)))
def test_imports_point_one_way(path: Path) -> None:
    own = area(path)
    used = {name.split(".")[1] for name in imports(path) if name.startswith("worker.")}
    used -= {own, "__version__"}
    assert used <= ALLOWED[own], f"{own} may not import {sorted(used - ALLOWED[own])}"


@pytest.mark.parametrize("path", sorted((WORKER / "processing").rglob("*.py")), ids=lambda p: p.name)
def test_processing_imports_no_service_client(path: Path) -> None:
    assert not {name.split(".")[0] for name in imports(path)} & CLIENTS


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from confluent_kafka import Consumer\n    import redis.cluster\n")
    assert {"confluent_kafka", "redis.cluster"} <= set(imports(module))
