"""`python -m bench.run [--quick] [--profile]`: throughput of the worker against a bare passthrough on the same
data, end-to-end latency at a fixed load, peak memory, Redis round trips; writes bench/RESULTS.md
(bench/RESULTS-quick.md with --quick). Everything runs on an embedded stack on 127.0.0.1 and stops by itself.
See bench/README.md."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_py

from bench import latency as latency_mod
from bench import profile as profile_mod
from bench.kafka_io import CommitWatcher, CorpusMessage, ReadBack, produce_all, read_back
from bench.procs import Child, Profiler, control_topic, cpu_seconds, peak_rss_mb, start_passthrough, start_worker
from bench.report import LATENCY_RATES, Produced, Results, Run, latency_label, read_results
from tests.support.corpus import generate
from worker.config import Settings
from worker.local.stack import Service, create_topics, start_kafka, start_redis

HERE = Path(__file__).resolve().parent
T0 = time.monotonic()


def say(text: str) -> None:
    """A progress line, with the time since the benchmark started."""
    print(f"[{time.monotonic() - T0:6.1f}s] {text}", flush=True)


PARTITIONS = 4
POLL_S = 0.02
CORPUS_SEED = 7  # tests.support.corpus's default
LATENCY_SEED = 11
# Latency runs are repeated with this consumer fetch.wait.max.ms: the embedded Tansu seems to hold a fetch for
# the whole fetch.wait.max.ms (librdkafka's default is 500) even when data arrives meanwhile.
SHORT_FETCH_WAIT_MS = 10


@dataclass
class Corpus:
    name: str
    topic: str
    messages: list[CorpusMessage]
    expected_ids: set[str]
    poison: int
    end_offsets: dict[int, int]


@dataclass
class Stack:
    kafka: Service
    redis: Service
    workdir: Path
    client: redis_py.Redis
    worker_env: dict[str, str] = field(default_factory=dict)  # --worker-env: for every worker run
    worker_root: Path | None = None  # --worker-root: the checkout the worker runs from

    @property
    def bootstrap(self) -> str:
        return self.kafka.address

    def reset_redis(self) -> None:
        self.client.flushall()
        self.client.config_resetstat()

    def redis_commands(self) -> int:
        return int(self.client.info("stats")["total_commands_processed"])

    def start(
        self,
        name: str,
        tag: str,
        input_topic: str,
        output: str,
        dlq: str,
        group: str,
        log_path: Path,
        *,
        extra_env: dict[str, str] | None = None,
        consumer: dict[str, str] | None = None,
    ) -> Child:
        """The process under test: the passthrough (`name` "passthrough", with extra `consumer` settings) or the
        worker in guarantee `name` on a flushed Redis (with `extra_env` over --worker-env)."""
        if name == "passthrough":
            return start_passthrough(
                tag,
                bootstrap=self.bootstrap,
                input_topic=input_topic,
                output_topic=output,
                group=group,
                log_path=log_path,
                consumer=consumer,
            )
        self.reset_redis()
        return start_worker(
            tag,
            bootstrap=self.bootstrap,
            redis_url=self.redis.address,
            input_topic=input_topic,
            output_topic=output,
            dlq_topic=dlq,
            group=group,
            guarantee=name,
            log_path=log_path,
            extra_env={**self.worker_env, **(extra_env or {})},
            root=self.worker_root,
        )


@contextlib.contextmanager
def stack(keep: bool) -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="gew-bench-"))
    kafka = redis_service = None
    try:
        kafka = start_kafka(workdir)
        redis_service = start_redis(workdir)
        client = redis_py.Redis.from_url(redis_service.address)
        yield Stack(kafka, redis_service, workdir, client)
    finally:
        for service in (kafka, redis_service):
            if service is not None:
                service.stop()
        if keep:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def default_guarantee() -> str:
    return str(Settings.model_fields["processing_guarantee"].default)


def make_corpus(name: str, events: int, seed: int = CORPUS_SEED) -> Corpus:
    """A corpus with only what the benchmark keeps of it (run in a pool process: the oracle's records stay there)."""
    started = time.perf_counter()
    corpus = generate(name, events, PARTITIONS, seed=seed)  # type: ignore[arg-type]
    ids = set(corpus.expected)
    say(
        f"corpus {name}: {corpus.events:,} events, {len(corpus.messages):,} messages "
        f"({corpus.duplicates:,} duplicates, {corpus.poison:,} poison), {len(ids):,} expected records, "
        f"generated in {time.perf_counter() - started:.1f}s",
    )
    return Corpus(name, f"bench-{name}-in", corpus.messages, ids, corpus.poison, {})


def throughput_run(st: Stack, results: Results, corpus: Corpus, name: str, *, profile: str | None = None) -> Pending:
    """One timed run: `name` is passthrough or a guarantee; `profile` a file prefix to record py-spy into.
    Its output is checked later (`Pending.verify`), so that reading it back does not delay the next run."""
    tag = f"{corpus.name}-{name}{'-profiled' if profile else ''}".replace("_", "-")
    group, output, dlq = f"bench-{tag}", f"bench-{tag}-out", f"bench-{tag}-dlq"
    create_topics(st.bootstrap, {output: PARTITIONS, dlq: 1, control_topic(group): 1})
    log_path = st.workdir / f"{tag}.log"
    run = Run(corpus.name, name, len(corpus.messages))
    say(f"run {tag}: starting")
    child = st.start(name, tag, corpus.topic, output, dlq, group, log_path)
    watcher = CommitWatcher(st.bootstrap, group, corpus.topic, corpus.end_offsets)
    profilers: list[tuple[str, Profiler]] = []
    metrics: dict[str, float] = {}
    try:
        assigned_at = child.wait_assigned(120)
        cpu0 = cpu_seconds(child.pid), cpu_seconds(st.kafka.process.pid), cpu_seconds(st.redis.process.pid)
        loop_cpu0 = cpu_seconds(child.pid, child.pid)
        if profile:
            for stale in HERE.glob(f"profile-{profile}-*"):
                stale.unlink()
            for kind, idle in (("wall", True), ("cpu", False)):
                profiler = Profiler.attach(child.pid, HERE / f"profile-{profile}-{kind}.txt", idle=idle)
                if profiler is None:
                    results.note("--profile: py-spy not found (pip install py-spy): no profile")
                    break
                profilers.append((kind, profiler))
        deadline = time.monotonic() + 120 + len(corpus.messages) / 500
        while not watcher.done():
            if not child.alive():
                raise RuntimeError(f"{tag} exited with {child.process.returncode}:\n{child.tail()}")
            if time.monotonic() > deadline:
                results.warn(f"{tag}: input not committed before the deadline; log: {log_path}")
                run.ok = False
                break
            time.sleep(POLL_S)
        finished = time.time()
        if run.ok:
            run.wall_s = finished - assigned_at
        for kind, profiler in profilers:
            if not profiler.stop():
                results.note(f"--profile: py-spy ({kind}) wrote nothing (ptrace not allowed?): {profiler.error()}")
        run.cpu_s = cpu_seconds(child.pid) - cpu0[0]
        run.loop_cpu_s = cpu_seconds(child.pid, child.pid) - loop_cpu0
        run.broker_cpu_s = cpu_seconds(st.kafka.process.pid) - cpu0[1]
        run.redis_cpu_s = cpu_seconds(st.redis.process.pid) - cpu0[2]
        run.peak_rss_mb = peak_rss_mb(child.pid)
        metrics = settled_metrics(child)
        if name != "passthrough":
            run.redis_commands = st.redis_commands()
            run.redis_round_trips = metrics.get("bench_redis_round_trips_total")
            run.batches = metrics.get("worker_batch_seconds_count")
    finally:
        watcher.close()
        for _kind, profiler in profilers:
            profiler.stop()
        code = child.stop()
    if code not in (0, None):
        results.warn(f"{tag}: exit code {code}; log: {log_path}")
    if name != "passthrough" and not any(child.log_events("stopped")):
        results.warn(f"{tag}: no 'stopped' log line; log: {log_path}")
    say(f"run {tag}: {run.wall_s or float('nan'):.2f}s, {run.events_per_s or 0:,.0f} input msg/s")
    results.runs.append(run)
    if name == "passthrough":
        return Pending(run, tag, output, None, corpus, run.input_messages, 0)
    run.records = int(metrics.get("worker_records_emitted_total", 0))
    run.dlq = int(metrics.get("worker_dlq_messages_total", 0))
    return Pending(run, tag, output, dlq, corpus, run.records, run.dlq)


def settled_metrics(child: Child, quiet_s: float = 0.3, limit_s: float = 5.0) -> dict[str, float]:
    """The process's metrics once its counters stopped moving: the worker counts a batch after Kafka confirmed
    its commit, so right after the committed offsets reached the end the last batch may not be counted yet."""
    counters = ("worker_batch_seconds_count", "worker_records_emitted_total", "worker_dlq_messages_total")
    metrics = child.metrics()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        again = child.metrics()
        if all(again.get(name) == metrics.get(name) for name in counters):
            return again
        metrics = again
    return metrics


@dataclass
class Pending:
    """A finished run whose output is still to be read back and checked (after all timed runs)."""

    run: Run
    tag: str
    output: str
    dlq: str | None  # None: the passthrough
    corpus: Corpus
    emitted: int  # output messages the process says it committed
    dead_lettered: int

    def wanted(self) -> dict[str, int]:
        """Topic -> messages it should hold."""
        if self.dlq is None:
            return {self.output: self.run.input_messages}
        return {
            self.output: max(len(self.corpus.expected_ids), self.emitted),
            self.dlq: max(self.corpus.poison, self.dead_lettered),
        }

    def verify(self, found: dict[str, ReadBack], results: Results) -> None:
        run, tag = self.run, self.tag
        records = found[self.output]
        run.records = records.messages
        if self.dlq is None:
            if run.records != run.input_messages:
                results.warn(f"{tag}: {run.records} output messages, expected {run.input_messages}")
            return
        want_records, want_dlq = len(self.corpus.expected_ids), self.corpus.poison
        run.dlq = found[self.dlq].messages
        missing = len(self.corpus.expected_ids - records.ids)
        extra = len(records.ids - self.corpus.expected_ids)
        if run.records != want_records or missing or extra:
            results.warn(
                f"{tag}: {run.records} output records ({len(records.ids)} distinct), expected {want_records}; "
                f"{missing} expected record ids missing, {extra} unexpected"
            )
        if run.dlq != want_dlq:
            results.warn(f"{tag}: {run.dlq} DLQ messages, expected {want_dlq}")
        if self.emitted != want_records:
            results.warn(f"{tag}: worker_records_emitted_total is {self.emitted}, expected {want_records}")


def latency_run(
    st: Stack,
    results: Results,
    name: str,
    messages: list[CorpusMessage],
    rate: float,
    seconds: float,
    extra_env: dict[str, str] | None = None,
    variant: str = "",
    passthrough_consumer: dict[str, str] | None = None,
) -> None:
    label = latency_label(name, rate, variant)
    tag = "latency-" + "".join(c if c.isalnum() else "-" for c in label)
    input_topic, output, dlq, group = f"bench-{tag}-in", f"bench-{tag}-out", f"bench-{tag}-dlq", f"bench-{tag}"
    topics = {input_topic: PARTITIONS, output: PARTITIONS, dlq: 1, control_topic(group): 1}
    create_topics(st.bootstrap, {**topics, latency_mod.WARM_UP_TOPIC: 1})
    log_path = st.workdir / f"{tag}.log"
    say(f"run {tag}: {rate:,.0f} msg/s for {seconds:g}s")
    child = st.start(
        name, tag, input_topic, output, dlq, group, log_path, extra_env=extra_env, consumer=passthrough_consumer
    )
    keys = latency_mod.passthrough_keys() if name == "passthrough" else latency_mod.worker_keys()
    try:
        child.wait_assigned(120)
        time.sleep(0.5)  # the first fetch and the group's offsets lookup are behind us
        result = latency_mod.measure(
            st.bootstrap,
            input_topic,
            output,
            messages,
            rate=rate,
            seconds=seconds,
            keys=keys,
        )
        metrics = child.metrics()
        if "worker_batch_seconds_count" in metrics:
            result.batches = metrics["worker_batch_seconds_count"]
            result.batch_mean_ms = 1000 * metrics["worker_batch_seconds_sum"] / max(1.0, result.batches)
            result.redis_round_trips = metrics.get("bench_redis_round_trips_total")
    finally:
        child.stop()
    results.latency[label] = result
    say(
        f"run {tag}: p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
        f"{result.matched}/{result.expected} records",
    )
    if result.matched != result.expected:
        results.warn(f"{tag}: {result.matched} records matched, expected {result.expected}")


def profile_section(prefix: str, title: str) -> str:
    wall, cpu = HERE / f"profile-{prefix}-wall.txt", HERE / f"profile-{prefix}-cpu.txt"
    parts = [f"### {title}", ""]
    if wall.exists():
        parts += [
            "Wall time of the worker's loop thread (py-spy `--idle`: waiting in C calls — librdkafka, sockets —"
            " shows as the Python line that made the call):",
            "",
            profile_mod.own_time(wall, by_line=True, thread="MainThread").markdown(),
            "",
            profile_mod.inclusive(wall, prefix="worker", thread="MainThread").markdown(),
            "",
        ]
    if cpu.exists():
        parts += [
            "CPU samples (py-spy without `--idle`: threads on CPU, all threads):",
            "",
            profile_mod.own_time(cpu, by_line=False).markdown(),
            "",
        ]
    if not (wall.exists() or cpu.exists()):
        parts.append("(no profile recorded: see the notes)")
    return "\n".join(parts)


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM both unwind through the `finally` blocks that stop every process started here.
    (A shell starting us in the background may ignore SIGINT: we reinstate it.)"""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="ten times smaller (about a minute)")
    parser.add_argument("--profile", action="store_true", help="extra flat and fanout runs under py-spy")
    parser.add_argument("--flat", type=int, help="flat events (default 300000, quick 30000)")
    parser.add_argument("--fanout", type=int, help="fanout events (default 30000, quick 3000)")
    parser.add_argument(
        "--rate",
        type=float,
        action="append",
        help="latency: offered msg/s (repeatable; default 1000 and 5000, the targets' rates)",
    )
    parser.add_argument("--seconds", type=float, help="latency: duration (default 10, quick 3)")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra WORKER_* setting for every worker run (repeatable), e.g. WORKER_BATCH_SIZE=200",
    )
    parser.add_argument(
        "--worker-root",
        type=Path,
        metavar="DIR",
        help="run the worker (python -m bench.counted_worker) from another checkout, to compare it with this one",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="FILE",
        help="an earlier results file (say, of --worker-root on the start commit): its numbers beside this run's",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory with every log")
    parser.add_argument("--output", type=Path, help="results file (default bench/RESULTS.md or RESULTS-quick.md)")
    args = parser.parse_args(argv)
    install_stop_handlers()
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    flat_events = args.flat or (30_000 if args.quick else 300_000)
    fanout_events = args.fanout or (3_000 if args.quick else 30_000)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    output = args.output or HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    guarantee = default_guarantee()
    rates = tuple(args.rate or LATENCY_RATES)
    results = Results(quick=args.quick, default_guarantee=guarantee, rates=rates)
    if args.before:
        results.before, results.before_tables = read_results(args.before)
    params: dict[str, Any] = {
        "flat events": f"{flat_events:,}",
        "fanout events": f"{fanout_events:,}",
        "latency": f"{' and '.join(f'{rate:,.0f}' for rate in rates)} msg/s for {seconds:g} s each",
        "partitions": PARTITIONS,
        "default guarantee": guarantee,
        **({"worker settings": " ".join(args.worker_env)} if args.worker_env else {}),
        **({"worker from": str(args.worker_root)} if args.worker_root else {}),
        **({"compared with": str(args.before)} if args.before else {}),
    }
    command = " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])])

    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=min(3, os.cpu_count() or 1)) as pool:  # generating takes a while
        jobs = [
            pool.submit(make_corpus, "flat", flat_events),
            pool.submit(make_corpus, "fanout", fanout_events),
            pool.submit(make_corpus, "flat", int(max(rates) * seconds * 1.1) + 100, LATENCY_SEED),
        ]
        flat, fanout, latency_corpus = (job.result() for job in jobs)
    latency_messages = latency_corpus.messages
    say(f"corpora generated in {time.perf_counter() - started:.1f}s")

    pending: list[Pending] = []
    with stack(args.keep_logs) as st:
        st.worker_env.update(worker_env)
        st.worker_root = args.worker_root
        say(f"stack: kafka {st.bootstrap}, redis {st.redis.address}, logs {st.workdir}")
        for corpus in (flat, fanout):
            create_topics(st.bootstrap, {corpus.topic: PARTITIONS})
            produced = produce_all(st.bootstrap, corpus.topic, corpus.messages)
            corpus.end_offsets = produced.end_offsets
            results.produced.append(Produced(corpus.name, produced.messages, produced.bytes / 1e6, produced.seconds))
            say(
                f"produced {corpus.name}: {produced.messages:,} messages, {produced.bytes / 1e6:.1f} MB in "
                f"{produced.seconds:.2f}s ({produced.messages / produced.seconds:,.0f} msg/s)",
            )
        for name in ("passthrough", "exactly_once", "at_least_once"):
            pending.append(throughput_run(st, results, flat, name))
        for name in ("passthrough", guarantee):
            pending.append(throughput_run(st, results, fanout, name))

        for rate in rates:  # the worker, and the passthrough as the baseline beside it
            latency_run(st, results, guarantee, latency_messages, rate, seconds)
            latency_run(st, results, "passthrough", latency_messages, rate, seconds)
        if not args.quick:  # what the latency depends on, at the highest rate: the fetch wait, the guarantee
            latency = latency_messages, max(rates), seconds
            other = "at_least_once" if guarantee == "exactly_once" else "exactly_once"
            variant = f" fetch.wait.max.ms={SHORT_FETCH_WAIT_MS}"
            short_fetch = {"fetch.wait.max.ms": str(SHORT_FETCH_WAIT_MS)}
            worker_short_fetch = {"WORKER_KAFKA_FETCH_WAIT_MAX_MS": str(SHORT_FETCH_WAIT_MS)}
            latency_run(st, results, "passthrough", *latency, variant=variant, passthrough_consumer=short_fetch)
            latency_run(st, results, guarantee, *latency, worker_short_fetch, variant=variant)
            latency_run(st, results, other, *latency)

        if args.profile:
            scratch = Results(args.quick, guarantee)  # profiled runs are slower: kept out of the tables
            for corpus in (flat, fanout):
                profiled = throughput_run(st, scratch, corpus, guarantee, profile=corpus.name).run
                title = (
                    f"{corpus.name}, {guarantee}, under py-spy ({profiled.events_per_s or 0:,.0f} input msg/s, "
                    f"{profiled.records_per_s or 0:,.0f} records/s while profiled)"
                )
                results.profile_sections.append(profile_section(corpus.name, title))
            results.warnings += scratch.warnings
            results.notes += scratch.notes

        say("reading the outputs back")
        wanted = {topic: n for check in pending for topic, n in check.wanted().items()}
        with_ids = {check.output for check in pending if check.dlq is not None}
        found = read_back(st.bootstrap, wanted, record_ids=with_ids)
        for check in pending:
            check.verify(found, results)

    print()
    print(results.checks_table())
    print()
    print(results.runs_table())
    print()
    print(results.latency_table())
    print()
    results.write(output, command, params)
    print(f"written: {output.relative_to(Path.cwd()) if output.is_relative_to(Path.cwd()) else output}")
    print(results.json_line())
    return 1 if results.warnings else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stop:
        print(f"\ninterrupted ({stop}); every process started here is stopped", file=sys.stderr)
        sys.exit(130)
