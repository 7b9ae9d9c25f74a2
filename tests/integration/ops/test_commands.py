"""Operator commands on a real broker and Redis: `check`, `dlq inspect`, `dlq redrive`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import Message, Producer

from tests.integration.helpers import Stack
from tests.integration.state.redis_cluster import redis_server
from worker.cli import main
from worker.local.stack import Service, create_topics

pytestmark = pytest.mark.integration

Headers = list[tuple[str, bytes]]


@pytest.fixture
def env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The stack's WORKER_* settings in this process's environment, for `main([...])`."""
    for name, value in stack.worker_env().items():
        monkeypatch.setenv(name, value)
    return stack


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def durable_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """A Redis as `check` wants it (the session's runs without AOF), as WORKER_REDIS_URL."""
    server = redis_server(
        tmp_path,
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--maxmemory",
        "64mb",
        "--maxmemory-policy",
        "noeviction",
    )
    monkeypatch.setenv("WORKER_REDIS_URL", server.address)
    yield server
    server.stop()


def test_check_passes_on_a_complete_stack(
    env: Stack, durable_redis: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    env.create_topics(input_partitions=3, output_partitions=2)

    code, out, _ = run(["check", "--timeout", "5"], capsys)

    lines = out.splitlines()
    assert code == 0, out
    assert f"ok: input topic '{env.input_topic}': 3 partition(s)" in lines
    assert f"ok: output topic '{env.output_topic}': 2 partition(s)" in lines
    assert f"ok: DLQ topic '{env.dlq_topic}': 1 partition(s)" in lines
    assert f"ok: control topic '{env.control_topic}': 3 partition(s)" in lines
    assert f"ok: Redis at {durable_redis.address} answers PING, 1 primary node(s)" in lines
    assert any(line.startswith("ok: Redis: version ") and "AOF on, appendfsync always" in line for line in lines)
    assert any(line.startswith("ok: Redis: noeviction, ") and "of maxmemory 67.1 MB used" in line for line in lines)
    assert lines[-1] == "check: all good, 0 warning(s)"


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_check_fails_on_a_redis_that_evicts(
    env: Stack, durable_redis: Service, capsys: pytest.CaptureFixture[str], policy: str
) -> None:
    """Issue 19, defect 3: `check` ignored maxmemory-policy; managed services often default to evicting ones."""
    env.create_topics()
    redis.Redis.from_url(durable_redis.address).config_set("maxmemory-policy", policy)

    code, out, _ = run(["check"], capsys)

    assert code == 1
    assert [line for line in out.splitlines() if line.startswith("problem:")] == [
        f"problem: Redis has maxmemory-policy {policy}: at maxmemory it evicts keys instead of refusing writes: "
        "evicted dedupe claims let copies through as new records, evicted parts of open changes lose users or "
        "leave a change stuck on missing state — set maxmemory-policy noeviction"
    ]


def test_check_warns_about_a_redis_without_maxmemory(
    env: Stack, durable_redis: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    env.create_topics()
    redis.Redis.from_url(durable_redis.address).config_set("maxmemory", 0)

    code, out, _ = run(["check"], capsys)

    assert code == 0
    [warning] = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warning.startswith("warning: Redis has no maxmemory (") and "set maxmemory below its memory limit" in warning


def test_check_fails_on_a_redis_without_aof(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    if env.redis_service is None:
        pytest.skip("an external Redis: its persistence is not ours to know")
    env.create_topics()

    code, out, _ = run(["check"], capsys)

    assert code == 1
    assert [line for line in out.splitlines() if line.startswith("problem:")] == [
        "problem: Redis has AOF persistence off (appendonly no): a Redis crash or restart loses the dedupe claims and "
        "open changes it acknowledged but had not written to disk, so events already committed in Kafka can be "
        "emitted again and parts of open changes forgotten — set appendonly yes"
    ]


def test_check_fails_in_plain_words_when_the_dlq_topic_is_missing(
    env: Stack, durable_redis: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    create_topics(env.bootstrap, {env.input_topic: 1, env.output_topic: 1, env.control_topic: 1})

    code, out, _ = run(["check"], capsys)

    assert code == 1
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert problems == [f"problem: DLQ topic '{env.dlq_topic}' does not exist — create it or fix WORKER_DLQ_TOPIC"]
    assert out.splitlines()[-1].startswith("check: 1 problem(s), ")


def dead_letter(reason: str, detail: str, offset: int, partition: int = 0) -> Headers:
    return [
        ("dlq.reason", reason.encode()),
        ("dlq.detail", detail.encode()),
        ("dlq.source.topic", b"SOURCE"),
        ("dlq.source.partition", str(partition).encode()),
        ("dlq.source.offset", str(offset).encode()),
    ]


def fill_dlq(stack: Stack) -> list[tuple[bytes | None, bytes | None, Headers]]:
    """Five dead letters, as the worker writes them (original key, value and headers + dlq.*), in DLQ order."""
    source = stack.input_topic.encode()
    letters: list[tuple[bytes | None, bytes | None, Headers]] = [
        (b"k1", b"{not json", [("trace", b"t-1"), *dead_letter("not_json", "value is not JSON", 10, 1)]),
        (
            None,
            b'{"specversion": "1.0", "id": "evt-2", "data": {}}',
            [("content-type", b"application/cloudevents+json"), *dead_letter("invalid_data", "data.id: missing", 11)],
        ),
        (b"k3", b"\xff", [("ce_id", b"evt-3"), ("ce_specversion", b"1.0"), *dead_letter("not_json", "bad", 12, 1)]),
        (None, b"[]", dead_letter("invalid_cloudevent", "event is a JSON list, not an object", 13)),
        (b"k5", None, dead_letter("not_json", "value is empty (tombstone)", 14)),
    ]
    letters = [(k, v, [(n, source if h == b"SOURCE" else h) for n, h in hs]) for k, v, hs in letters]
    producer = Producer({"bootstrap.servers": stack.bootstrap, "enable.idempotence": True})
    for key, value, headers in letters:
        producer.produce(stack.dlq_topic, value, key, partition=0, headers=headers)
    assert producer.flush(30) == 0
    return letters


def test_dlq_inspect_counts_by_reason_and_lists_the_messages(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    env.create_topics(2)
    fill_dlq(env)

    code, out, _ = run(["dlq", "inspect", "--reason", "not_json", "--limit", "2"], capsys)

    assert code == 0
    assert out.splitlines() == [
        f"5 messages on DLQ topic '{env.dlq_topic}'",
        "  not_json             3",
        "  invalid_data         1",
        "  invalid_cloudevent   1",
        "first 2 with reason not_json (partition:offset  reason  source  event id  detail):",
        f"  0:0  not_json  {env.input_topic}:1:10  -  value is not JSON",
        f"  0:2  not_json  {env.input_topic}:1:12  evt-3  bad",
    ]
    code, out, _ = run(["dlq", "inspect", "--from-offset", "1", "--to-offset", "1"], capsys)
    assert out.splitlines()[0] == f"1 messages on DLQ topic '{env.dlq_topic}'"
    assert out.splitlines()[-1] == f"  0:1  invalid_data  {env.input_topic}:0:11  evt-2  data.id: missing"


def input_messages(stack: Stack, count: int) -> list[Message]:
    return stack.read(stack.input_topic, lambda m: len(m) >= count, timeout=10 if count else 2)


def test_dlq_redrive_dry_run_sends_nothing(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    env.create_topics(2)
    fill_dlq(env)

    code, out, _ = run(["dlq", "redrive", "--dry-run"], capsys)

    assert code == 0
    assert out.splitlines() == [
        f"would send 0:0 (not_json, id -) to {env.input_topic}[1]",
        f"would send 0:1 (invalid_data, id evt-2) to {env.input_topic}[0]",
        f"would send 0:2 (not_json, id evt-3) to {env.input_topic}[1]",
        f"would send 0:3 (invalid_cloudevent, id -) to {env.input_topic}[0]",
        f"would send 0:4 (not_json, id -) to {env.input_topic}[0]",
        f"dry run, nothing sent: would send 5 messages ({env.input_topic}: 5)",
    ]
    assert input_messages(env, 0) == []


def test_dlq_redrive_resends_one_reason_to_the_input_without_the_dlq_headers(
    env: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    env.create_topics(2)
    fill_dlq(env)

    code, out, _ = run(["dlq", "redrive", "--reason", "not_json"], capsys)

    assert code == 0
    assert out == f"sent 3 messages ({env.input_topic}: 3)\n"
    sent = sorted(
        ((m.partition(), m.key(), m.value(), m.headers() or []) for m in input_messages(env, 3)), key=lambda m: m[1]
    )
    assert sent == [
        (1, b"k1", b"{not json", [("trace", b"t-1")]),
        (1, b"k3", b"\xff", [("ce_id", b"evt-3"), ("ce_specversion", b"1.0")]),
        (0, b"k5", None, []),
    ]


def test_dlq_redrive_to_another_topic_and_a_missing_dlq(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["dlq", "redrive"], capsys)
    assert code == 1
    assert err == f"error: DLQ topic '{env.dlq_topic}' does not exist — check WORKER_DLQ_TOPIC\n"

    env.create_topics(2)
    fill_dlq(env)
    code, out, _ = run(
        ["dlq", "redrive", "--to-topic", env.output_topic, "--partition", "0", "--from-offset", "3"], capsys
    )
    assert (code, out) == (0, f"sent 2 messages ({env.output_topic}: 2)\n")
    assert [m.value() for m in env.read(env.output_topic, lambda m: len(m) >= 2, 10)] in ([b"[]", None], [None, b"[]"])
