"""Command line: `python -m worker <command>`; `python -m worker --help` lists the commands. This module holds the
command table; each command's work is in the package of its concern."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import KafkaException
from pydantic import ValidationError

from worker import __version__, logs
from worker.config import ConfigError, Settings, describe_errors, load_settings
from worker.local import demo
from worker.local.samples import samples
from worker.ops import check, dlq, topics, validate


def cmd_run(args: argparse.Namespace) -> int:
    from worker.consumer import app
    from worker.consumer.loop import RewindFailed
    from worker.consumer.supervisor import Supervisor, container_processes

    logs.configure(os.environ.get("WORKER_LOG_LEVEL", "INFO").upper())
    with demo.stack(args.embedded) as settings, demo.ingest_for_run(args.embedded, settings):
        try:
            topics.prepare_run(settings)
        except topics.Refusal as refusal:
            print(f"refusing to start: {refusal}", file=sys.stderr)
            return 1
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
        except RewindFailed:  # logged; the member has left the group: a restart replays from the committed offsets
            return 1
        finally:
            server.stop()
            # Stopped: a repeated SIGTERM must not kill the interpreter's teardown (Python restores the default
            # handlers then, and destroying the clients takes a moment): the exit code stays the loop's.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
    return 0


def cmd_ingest(_args: argparse.Namespace) -> int:
    from worker.ingest.server import refusal, serve

    logs.configure(os.environ.get("WORKER_LOG_LEVEL", "INFO").upper())
    settings = load_settings()
    try:
        if refusal(settings) is None:  # else serve() says why at once, without waiting for Kafka
            topics.prepare_ingest(settings)
    except topics.Refusal as missing:
        print(f"refusing to start: {missing}", file=sys.stderr)
        return 1
    return serve(settings)


def cmd_backfill(args: argparse.Namespace) -> int:
    from worker.upstream import jobs
    from worker.upstream.backfill import Interval

    logs.configure(os.environ.get("WORKER_LOG_LEVEL", "INFO").upper())
    try:
        since = jobs.parse_time(args.since)
        until = jobs.parse_time(args.until) if args.until else datetime.now(UTC)
    except ValueError as error:
        print(f"--since/--until: {error}", file=sys.stderr)
        return 2
    interval = Interval(since, until, args.dry_run, args.restart, args.beyond_dedupe_window)
    return _upstream(lambda settings: jobs.run_backfill(settings, interval, args.tenant))


def cmd_reconcile(args: argparse.Namespace) -> int:
    from worker.upstream import jobs

    logs.configure(os.environ.get("WORKER_LOG_LEVEL", "INFO").upper())
    return _upstream(lambda settings: jobs.run_reconcile(settings, args.tenant, args.emit))


def cmd_watch(args: argparse.Namespace) -> int:
    from worker.upstream import jobs

    logs.configure(os.environ.get("WORKER_LOG_LEVEL", "INFO").upper())
    return _upstream(lambda settings: jobs.run_watch(settings, args.once))


def _upstream(job: Callable[[Settings], int]) -> int:
    try:
        return job(load_settings())
    except ConfigError as error:
        print(f"invalid configuration: {error}", file=sys.stderr)
        return 2


def cmd_sample_events(_args: argparse.Namespace) -> int:
    settings = load_settings()
    demo.send_samples(settings)
    print(f"sent {len(samples())} sample messages to {settings.input_topics[0]}")
    return 0


def cmd_demo(_args: argparse.Namespace) -> int:
    from worker.consumer import app

    return demo.run(lambda settings: app.build(settings).loop)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
    except ValidationError as error:
        print("problem: " + describe_errors(error))
        return 1
    return check.check(settings, args.timeout)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        return validate.validate(validate.input_lines(args.file), "stdin" if args.file == "-" else args.file)
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
        help="start a local broker (Apache Kafka, else Tansu) / redis-server for whichever of "
        "WORKER_KAFKA_BOOTSTRAP_SERVERS and WORKER_REDIS_URL is unset, and create the topics",
    )


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=5, metavar="SECONDS", help="per service (default: 5)")


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="JSON lines, one structured-mode CloudEvent per line; - for stdin")


def _tenant_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", metavar="T", help="one of the configured tenants (name or tenant id); default: all")


def _backfill_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", required=True, metavar="TIME", help="ISO 8601 (UTC without a zone)")
    parser.add_argument("--until", metavar="TIME", help="ISO 8601 (default: now)")
    _tenant_argument(parser)
    parser.add_argument("--dry-run", action="store_true", help="read and count; produce nothing, save no checkpoint")
    parser.add_argument("--restart", action="store_true", help="ignore where an earlier run with this --since got to")
    parser.add_argument(
        "--beyond-dedupe-window",
        action="store_true",
        help="also send events older than WORKER_DEDUPE_TTL_SECONDS (the worker may have forgotten them: their "
        "records can come out a second time)",
    )


def _reconcile_arguments(parser: argparse.ArgumentParser) -> None:
    _tenant_argument(parser)
    parser.add_argument("--emit", action="store_true", help="send the corrective events (default: report only)")


def _watch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="one cycle over every tenant, then exit")


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
    "backfill": Command(
        cmd_backfill,
        "read a tenant's group events from Qlik's Audits API and produce them to the ingest topic (resumable, "
        "idempotent)",
        _backfill_arguments,
    ),
    "watch": Command(
        cmd_watch,
        "watch the tenants' webhooks: resend failed deliveries, re-enable, backfill gaps, reconcile on a schedule",
        _watch_arguments,
    ),
    "reconcile": Command(
        cmd_reconcile,
        "compare a tenant's groups in Qlik with the worker's; --emit sends corrective events",
        _reconcile_arguments,
    ),
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
