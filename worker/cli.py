"""Command line: `python -m worker <command>`; `python -m worker --help` lists the commands."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import orjson
import structlog
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from pydantic import ValidationError

from worker import __version__, dlq, logs, ops
from worker.config import ConfigError, Settings, describe_errors
from worker.deadletter import PREFIX, dead_letter_fields
from worker.localstack import create_topics, embedded
from worker.samples import expected_counts, samples

# The embedded brokers' groups settle in a few seconds with these (Tansu takes ~23 s with librdkafka's defaults).
FAST_GROUP_TIMEOUTS = {
    "WORKER_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "WORKER_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
    "WORKER_KAFKA_MAX_POLL_INTERVAL_MS": "10000",
}
EMBEDDED_PARTITIONS = 4


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        print(describe_errors(error), file=sys.stderr)
        raise SystemExit(2) from None


@contextmanager
def _stack(embed: bool) -> Iterator[Settings]:
    """Settings for the configured services, or for an embedded stack where they are not configured."""
    if not embed:
        yield load_settings()
        return
    started_kafka = not os.environ.get("WORKER_KAFKA_BOOTSTRAP_SERVERS")
    with embedded(os.environ) as stack:
        if started_kafka:
            for key, value in FAST_GROUP_TIMEOUTS.items():
                os.environ.setdefault(key, value)
        settings = load_settings()
        topics = dict.fromkeys(settings.subscribed_topics, EMBEDDED_PARTITIONS)
        create_topics(
            settings.kafka_bootstrap_servers,
            {
                **topics,
                settings.output_topic: EMBEDDED_PARTITIONS,
                settings.control_topic: EMBEDDED_PARTITIONS,
                settings.dlq_topic: 1,
            },
        )
        log = structlog.get_logger("worker.cli")
        log.info(
            "embedded_stack", kafka=settings.kafka_bootstrap_servers, redis=settings.redis_url, dir=str(stack.workdir)
        )
        yield settings


def cmd_run(args: argparse.Namespace) -> int:
    from worker import app
    from worker.supervisor import Supervisor, container_processes

    logs.configure(os.environ.get("WORKER_LOG_LEVEL", "INFO").upper())
    with _stack(args.embedded) as settings, _ingest_beside(args.embedded, settings):
        if (processes := container_processes(settings.processes)) > 1:
            return Supervisor(settings, processes).run()
        try:
            worker = app.build(settings)
        except ConfigError as error:
            print(f"invalid configuration: {error}", file=sys.stderr)
            return 2
        worker.loop.install_signal_handlers()
        server = worker.health_server.start()
        try:
            worker.loop.run()
        finally:
            server.stop()
    return 0


@contextmanager
def _ingest_beside(embed: bool, settings: Settings) -> Iterator[None]:
    """With --embedded: the webhook ingest too, its curl line, and the records printed as they come out."""
    if not embed:
        yield
        return
    from worker.ingest_demo import curl_hint, follow_records, ingest_beside

    stop = threading.Event()
    with ingest_beside() as beside:
        print(curl_hint(beside), flush=True)
        follower = threading.Thread(target=follow_records, args=(settings, stop), name="records", daemon=True)
        follower.start()
        try:
            yield
        finally:
            stop.set()
            follower.join(5)


def cmd_ingest(_args: argparse.Namespace) -> int:
    from worker.ingest import serve

    logs.configure(os.environ.get("WORKER_LOG_LEVEL", "INFO").upper())
    return serve(load_settings())


def cmd_sample_events(_args: argparse.Namespace) -> int:
    settings = load_settings()
    send_samples(settings)
    print(f"sent {len(samples())} sample messages to {settings.input_topics[0]}")
    return 0


def send_samples(settings: Settings) -> None:
    producer = Producer({**settings.kafka_overrides("producer"), "enable.idempotence": True})
    partitions = len(
        producer.list_topics(settings.input_topics[0], timeout=10).topics[settings.input_topics[0]].partitions
    )
    for sample in samples():
        producer.produce(
            settings.input_topics[0], sample.value, partition=sample.partition % partitions, headers=sample.headers
        )
    if producer.flush(30):
        raise RuntimeError("sample events were not acknowledged within 30 s")


def cmd_demo(_args: argparse.Namespace) -> int:
    """Embedded stack + worker + ingest; the sample events posted as signed webhooks; print what comes out."""
    from worker import app
    from worker.ingest_demo import ingest_beside, post_samples

    logs.configure("WARNING")
    with _stack(embed=True) as settings, ingest_beside("WARNING") as beside:
        worker = app.build(settings).loop
        runner = threading.Thread(target=worker.run, name="worker")
        runner.start()
        try:
            sent = post_samples(beside)
            print(f"posted {len(sent)} signed webhooks to {beside.ingest.webhook_url}:")
            for sample, answer in sent:
                print(f"  - {sample.note}: {answer.status} {orjson.dumps(answer.body).decode()}")
            want_records, want_dlq = expected_counts([sample for sample, answer in sent if answer.status == 202])
            records, dead = read_outputs(settings, expected_records=want_records, expected_dlq=want_dlq, timeout=90)
        finally:
            worker.stop()
            runner.join()
    print(f"\n{len(records)} records on {settings.output_topic}:")
    for record in records:
        print("  " + orjson.dumps(record).decode())
    print(f"\n{len(dead)} messages on {settings.dlq_topic}:")
    for headers in dead:
        print("  " + orjson.dumps(headers).decode())
    return 0 if (len(records), len(dead)) == (want_records, want_dlq) else 1


def read_outputs(
    settings: Settings, *, expected_records: int, expected_dlq: int, timeout: float
) -> tuple[list[dict[str, object]], list[dict[str, str]]]:
    """Committed output records and DLQ headers, read from the start until the expected counts or timeout."""
    consumer = Consumer(
        {
            **settings.kafka_overrides("consumer"),
            "group.id": "demo-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    topics = consumer.list_topics(timeout=10).topics
    consumer.assign(
        [TopicPartition(t, p, 0) for t in (settings.output_topic, settings.dlq_topic) for p in topics[t].partitions]
    )
    records: list[dict[str, object]] = []
    dead: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (len(records) < expected_records or len(dead) < expected_dlq):
        for message in consumer.consume(100, 0.5):
            if message.error():
                continue
            if message.topic() == settings.output_topic:
                records.append(orjson.loads(message.value() or b"null"))
            else:
                dead.append({PREFIX + k: v for k, v in dead_letter_fields(message.headers()).items()})
    consumer.close()
    return records, dead


def cmd_check(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
    except ValidationError as error:
        print("problem: " + describe_errors(error))
        return 1
    return ops.check(settings, args.timeout)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        return ops.validate(ops.input_lines(args.file), "stdin" if args.file == "-" else args.file)
    except OSError as error:
        print(f"cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return 2


def cmd_dlq_inspect(args: argparse.Namespace) -> int:
    return _dlq(dlq.inspect, args, limit=args.limit)


def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    return _dlq(dlq.redrive, args, to_topic=args.to_topic, dry_run=args.dry_run)


def _dlq(command: Callable[..., int], args: argparse.Namespace, **options: object) -> int:
    try:
        return command(load_settings(), _selection(args), _reading(args), **options)
    except (dlq.OpsError, KafkaException) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _selection(args: argparse.Namespace) -> dlq.Selection:
    return dlq.Selection(args.reason, args.partition, args.from_offset, args.to_offset)


def _reading(args: argparse.Namespace) -> dlq.Reading:
    return dlq.Reading(timeout=args.timeout, quiet=args.quiet, progress=args.progress)


# ---- registration ------------------------------------------------------------------------------------------

Arguments = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    func: Callable[[argparse.Namespace], int]
    help: str
    arguments: Arguments | None = None


@dataclass(frozen=True)
class Group:
    help: str
    commands: Mapping[str, Command]


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="start a local Tansu broker / redis-server for whichever of WORKER_KAFKA_BOOTSTRAP_SERVERS "
        "and WORKER_REDIS_URL is unset, and create the topics",
    )


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=5, metavar="SECONDS", help="per service (default: 5)")


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="JSON lines, one structured-mode CloudEvent per line; - for stdin")


def _dlq_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partition", type=int, metavar="P", help="only this DLQ partition (default: all)")
    parser.add_argument("--from-offset", type=int, metavar="A", help="first DLQ offset to read, per partition")
    parser.add_argument("--to-offset", type=int, metavar="B", help="last DLQ offset to read (inclusive)")
    parser.add_argument("--timeout", type=float, default=10, metavar="SECONDS", help="for Kafka metadata (default: 10)")
    parser.add_argument(
        "--quiet",
        type=float,
        default=10,
        metavar="SECONDS",
        help="stop after this long with nothing read (default: 10)",
    )
    parser.add_argument(
        "--progress", type=int, default=10_000, metavar="N", help="a progress line on stderr every N messages"
    )


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    _dlq_arguments(parser)
    parser.add_argument("--reason", metavar="R", help="list only messages with this dlq.reason (counts cover all)")
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="messages listed (default: 20)")


def _redrive_arguments(parser: argparse.ArgumentParser) -> None:
    _dlq_arguments(parser)
    parser.add_argument("--reason", metavar="R", help="only messages with this dlq.reason (e.g. not_json)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be sent; send nothing")
    parser.add_argument(
        "--to-topic", metavar="T", help="send here instead of each message's original topic (dlq.source.topic)"
    )


COMMANDS: dict[str, Command | Group] = {
    "run": Command(cmd_run, "run the worker until SIGTERM/SIGINT", _run_arguments),
    "ingest": Command(cmd_ingest, "serve the signed Qlik Cloud webhook endpoint that puts events on the ingest topic"),
    "demo": Command(
        cmd_demo, "embedded stack + worker + ingest, sample events posted as webhooks: print what comes out, exit"
    ),
    "sample-events": Command(cmd_sample_events, "send the sample events to the first input topic and exit"),
    "check": Command(
        cmd_check,
        "check Kafka, the input, output and DLQ topics, and Redis as configured; exit 1 on any problem",
        _check_arguments,
    ),
    "validate": Command(
        cmd_validate,
        "print what the worker would emit for a file of events, without Kafka or Redis; exit 1 on any invalid line",
        _validate_arguments,
    ),
    "dlq": Group(
        "the dead-letter topic",
        {
            "inspect": Command(
                cmd_dlq_inspect,
                "read the DLQ topic from the start: counts per dlq.reason and the first messages",
                _inspect_arguments,
            ),
            "redrive": Command(
                cmd_dlq_redrive,
                "re-send selected DLQ messages, without their dlq.* headers, to their original input topic",
                _redrive_arguments,
            ),
        },
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="Qlik Cloud group events in, normalized membership-change records out. "
        "Configuration comes from WORKER_* environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=__version__)
    _add_commands(parser, COMMANDS, "command")
    return parser


def _add_commands(parser: argparse.ArgumentParser, commands: Mapping[str, Command | Group], dest: str) -> None:
    subparsers = parser.add_subparsers(dest=dest, required=True, metavar="COMMAND")
    for name, entry in commands.items():
        sub = subparsers.add_parser(name, help=entry.help, description=entry.help)
        if isinstance(entry, Group):
            _add_commands(sub, entry.commands, f"{dest}_{name}")
            continue
        sub.set_defaults(func=entry.func)
        if entry.arguments is not None:
            entry.arguments(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
