"""Chaos run: 3 workers, a steady producer, SIGKILLs, a Redis restart and scaling, two workers sharing a
transactional id, the broker paused with SIGSTOP, a large change and oversized poison, then an audit of the output.

`python -m tests.chaos.chaos [--events N] [--kill-every S] [--group-protocol P]` prints a one-line JSON summary
and exits non-zero when a record is missing, repeated, extra or wrong, or a poison message is not in the DLQ
exactly once. Everything runs on 127.0.0.1 (the local stack's broker and a durable private redis-server) and
stops by itself.

On Apache Kafka the group starts with one worker, scales to three at once and back to one at once (members
leave and join while the group is still rebalancing), and SIGKILLs come every `kill_every` seconds whatever
the group is doing. On the embedded Tansu, which loses a group when members leave mid-rebalance (see the
README), disruptions are spaced past the session timeout, wait for a settled group, and scaling goes one
worker at a time from three.

The faults of issue 12, in both: a second process with worker 0's `WORKER_TRANSACTIONAL_ID` runs for a while
(the two fence each other), the broker is stopped with SIGSTOP for a few seconds while the workers are busy
(commits in flight hang, then time out or go through), a `users.modified` change of `big_change` users (300
parts of 1,000 in the full run) comes out in chunks, and an oversized poison message (1.5 MB, sent zstd
compressed) must reach the DLQ as a `too_large` stub. Every one of those records and stubs is audited.

The faults of issue 19, in both: a zombie, a worker frozen with SIGSTOP past its session timeout (and its
transaction timeout) while Redis stays reachable, then thawed: its partitions moved meanwhile, and whatever
it was doing it finishes against Redis (the tag rule: its runs of positions another member committed change
nothing) before the coordinator fences its commit; and Redis full (`maxmemory` below what it uses, under
`noeviction`) for a few seconds: every write is refused, the workers retry, then there is room again.
"""

from __future__ import annotations

import argparse
import itertools
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis as redis_py
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from tests.integration.helpers import Stack, WorkerProcess, aborted_records_hidden, read_topic, wait_for
from tests.support.corpus import OVERSIZED_BYTES, Corpus, comparable, generate
from worker.consumer.sinks import TOO_LARGE
from worker.local.stack import free_port, start_kafka, start_redis

PARTITIONS = 8
SPACING = 7.0  # seconds between two disruptions: more than the workers' session timeout (6 s)
SETTLE_LIMIT = 60.0  # the longest a disruption waits for the group to settle before it goes ahead anyway
TWIN_LIMIT = 60.0  # the longest the twin is kept past its planned stop, waiting for a fencing


@dataclass
class Chaos:
    events: int = 200_000
    rate: float = 4_000  # produced events per second
    kill_every: float = 8.0
    workers: int = 3
    scale: bool = True  # scale during the run: 1 -> 3 -> 1 on Apache Kafka, 3 -> 1 -> 3 on Tansu
    group_protocol: str = "classic"  # WORKER_GROUP_PROTOCOL of the workers
    seed: int = 11
    big_change: int = 300_000  # users of one large users.modified change (0: none)
    oversized: int = 1  # oversized poison messages
    twin: bool = True  # a second process with worker 0's transactional id, for a while
    pause_broker_s: float = 4.0  # SIGSTOP the broker this long once, mid-run (0: never)
    zombie_s: float = 12.0  # SIGSTOP a worker this long once, past its session and transaction timeouts (0: never)
    redis_full_s: float = 5.0  # Redis refuses every write this long once (0: never)
    log: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {what}")
        print(self.log[-1], file=sys.stderr, flush=True)


class Feed(threading.Thread):
    """Produces the corpus at a steady rate, compressed (zstd: the oversized poison is a few kB on the
    input topic); remembers end offsets and where the poison went."""

    def __init__(self, bootstrap: str, topic: str, corpus: Corpus, rate: float) -> None:
        super().__init__(name="feed", daemon=True)
        self.bootstrap, self.topic, self.corpus, self.rate = bootstrap, topic, corpus, rate
        self.ends: dict[int, int] = {}
        self.poison: set[tuple[int, int]] = set()
        self.oversized: set[tuple[int, int]] = set()
        self.errors: list[str] = []

    def run(self) -> None:
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "linger.ms": 10,
                "compression.type": "zstd",
                "message.max.bytes": 2 * OVERSIZED_BYTES,  # checked before compression
            }
        )
        started = time.monotonic()
        for sent, (partition, key, value, headers) in enumerate(self.corpus.messages):
            callback = self._delivered
            if sent in self.corpus.oversized_at:
                callback = self._delivered_oversized
            elif sent in self.corpus.poison_at:
                callback = self._delivered_poison
            while True:
                try:
                    producer.produce(self.topic, value, key, partition=partition, headers=headers, on_delivery=callback)
                    break
                except BufferError:
                    producer.poll(0.05)
            ahead = sent / self.rate - (time.monotonic() - started)
            if ahead > 0:
                producer.poll(ahead)
        if producer.flush(120):
            self.errors.append("feed not acknowledged")

    def _delivered(self, error: Any, message: Any) -> None:
        if error:
            self.errors.append(str(error))
        else:
            self.ends[message.partition()] = max(self.ends.get(message.partition(), 0), message.offset() + 1)

    def _delivered_poison(self, error: Any, message: Any) -> None:
        self._delivered(error, message)
        if not error:
            self.poison.add((message.partition(), message.offset()))

    def _delivered_oversized(self, error: Any, message: Any) -> None:
        self._delivered_poison(error, message)
        if not error:
            self.oversized.add((message.partition(), message.offset()))


def run(config: Chaos, workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    rng = random.Random(config.seed)
    kafka = start_kafka(workdir)
    careful = kafka.kind == "tansu"  # space disruptions and wait for a settled group (see the module doc)
    redis_dir = workdir / "redis"
    redis_dir.mkdir()
    redis_port = free_port()
    redis = start_redis(redis_dir, redis_port, durable=True)
    stack = Stack(kafka.address, redis.address, redis, kafka, "chaos-in", "chaos-out", "chaos-dlq", "chaos", workdir)
    extra = {
        "WORKER_BATCH_SIZE": "500",
        "WORKER_SHUTDOWN_TIMEOUT_SECONDS": "10",
        "WORKER_GROUP_PROTOCOL": config.group_protocol,
    }
    workers: dict[int, WorkerProcess] = {}
    twin: WorkerProcess | None = None
    kills = fencings = zombies = redis_full = 0
    try:
        stack.create_topics(PARTITIONS, PARTITIONS)
        corpus = generate(
            "mixed",
            config.events,
            PARTITIONS,
            seed=config.seed,
            big_change=config.big_change,
            oversized=config.oversized,
        )
        config.note(f"corpus: {len(corpus.messages)} messages, {len(corpus.expected)} expected records")
        first = config.workers if careful or not config.scale else 1
        for slot in range(first):
            workers[slot] = stack.start_worker(slot, **extra)
        wait_for(lambda: all(w.get("/readyz")[0] == 200 for w in workers.values()), 90, "workers ready")
        feed = Feed(stack.bootstrap, stack.input_topic, corpus, config.rate)
        feed.start()
        feed_seconds = len(corpus.messages) / config.rate
        plan = [(feed_seconds * 0.35, "restart redis")]
        if config.twin:
            plan += [(feed_seconds * 0.25, "start a twin of worker 0"), (feed_seconds * 0.45, "stop the twin")]
        if config.pause_broker_s:
            plan.append((feed_seconds * 0.5, "pause the broker"))
        if config.zombie_s:
            # while other workers hold partitions (after the scale up), thawed well before any scale down
            plan.append((feed_seconds * 0.22, "freeze a worker"))
        if config.redis_full_s:
            plan.append((feed_seconds * 0.65, "fill redis"))
        if config.scale and careful:
            # one worker at a time, then all back at once
            plan += [(feed_seconds * share, "scale down") for share in (0.45, 0.55)]
            plan.append((feed_seconds * 0.7, "scale up"))
        elif config.scale:
            plan += [(feed_seconds * 0.15, "scale up"), (feed_seconds * 0.7, "scale down to one")]
        plan.sort()
        next_kill = time.monotonic() + config.kill_every
        t0 = last_action = time.monotonic()
        frozen: tuple[int, float] | None = None  # the zombie: its slot and when to thaw it
        while feed.is_alive() or plan or frozen:
            time.sleep(0.2)
            scale_down_due = plan and "scale down" in plan[0][1] and time.monotonic() - t0 >= plan[0][0]
            if frozen is not None and (time.monotonic() >= frozen[1] or scale_down_due):
                workers[frozen[0]].signal(signal.SIGCONT)  # it finishes what it was doing, then is fenced
                config.note(f"thaw worker {frozen[0]}")
                frozen, zombies = None, zombies + 1
            if careful:
                # Actions at least SPACING apart, and only once every worker holds partitions again (the last
                # rebalance finished), unless that takes longer than SETTLE_LIMIT: a group that never settles
                # is then the final check's failure.
                if time.monotonic() - last_action < SPACING:
                    continue
                settled = all(w.get("/readyz")[0] == 200 for w in workers.values())
                if not settled and time.monotonic() - last_action < SETTLE_LIMIT:
                    continue
            if plan and time.monotonic() - t0 >= plan[0][0]:
                last_action = time.monotonic()
                _, action = plan.pop(0)
                config.note(action)
                if action == "restart redis":
                    redis.stop()
                    time.sleep(2)
                    redis = stack.redis_service = start_redis(redis_dir, redis_port, durable=True)
                elif action == "start a twin of worker 0":
                    # the same WORKER_TRANSACTIONAL_ID as worker 0 (a shared ConfigMap): they fence each other
                    env = stack.worker_env(**{**extra, "WORKER_TRANSACTIONAL_ID": f"{stack.group_id}-0"})
                    twin = WorkerProcess(env, workdir / "twin.log").start()
                    stack.workers.append(twin)
                elif action == "stop the twin":
                    assert twin is not None
                    # Not before a fencing (the twin's producer starts at its first batch, so it needs
                    # partitions, which a classic group's rebalances can keep from it for a while), at most
                    # TWIN_LIMIT more.
                    deadline = time.monotonic() + TWIN_LIMIT
                    while not (fencings := _fencings(twin, workers[0])) and time.monotonic() < deadline:
                        time.sleep(0.5)
                    config.note(f"stop the twin after {fencings} fencings")
                    assert twin.terminate() == 0, "SIGTERM must exit 0"
                elif action == "pause the broker":
                    kafka.pause()  # SIGSTOP: batches in their commit wait for the broker
                    time.sleep(config.pause_broker_s)
                    kafka.resume()
                elif action == "freeze a worker":
                    # one that holds partitions (ready), so it is frozen in the middle of its work, and not
                    # worker 0, whose twin must be able to fence it; the other faults go on meanwhile
                    others = [slot for slot in workers if slot != 0] or list(workers)
                    busy = [slot for slot in others if workers[slot].get("/readyz")[0] == 200]
                    if not busy and time.monotonic() - t0 < feed_seconds * 0.5:  # not ready yet: a little later
                        plan = sorted([*plan, (time.monotonic() - t0 + 1, action)])
                        continue
                    slot = rng.choice(busy or others)
                    config.note(f"freeze worker {slot} for {config.zombie_s:g} s")
                    workers[slot].signal(signal.SIGSTOP)  # mid-batch: the group moves on without it
                    frozen = slot, time.monotonic() + config.zombie_s
                elif action == "fill redis":
                    fill_redis(redis.address, config.redis_full_s)
                    redis_full += 1
                elif action == "scale down":
                    code = workers.pop(max(workers)).terminate()
                    assert code == 0, f"SIGTERM must exit 0, got {code}"
                elif action == "scale down to one":
                    leaving = [workers.pop(slot) for slot in sorted(workers)[1:]]
                    for worker in leaving:  # all at once: each leaves while the others' leave rebalances
                        worker.signal(signal.SIGTERM)
                    codes = [w.wait(60) for w in leaving]
                    assert codes == [0] * len(leaving), f"SIGTERM must exit 0, got {codes}"
                else:
                    for slot in range(config.workers):
                        if slot not in workers:
                            workers[slot] = stack.start_worker(slot, **extra)
            elif time.monotonic() >= next_kill and (killable := [s for s in workers if not frozen or s != frozen[0]]):
                last_action = time.monotonic()
                slot = rng.choice(killable)
                workers[slot].kill()
                kills += 1
                config.note(f"SIGKILL worker {slot}, restart")
                workers[slot] = stack.start_worker(slot, **extra)
                next_kill = time.monotonic() + config.kill_every
        assert not feed.errors, feed.errors[:3]
        config.note(f"feed done; waiting for the group to commit {sum(feed.ends.values())} offsets")
        try:
            wait_for(
                lambda: _committed(stack, feed.ends) and _control_drained(stack),
                300,
                "committed offsets at the end of every input partition and no command left on the control topic",
            )
        except AssertionError:
            config.note(f"stuck: committed {stack.committed(PARTITIONS)} ends {feed.ends}")
            for slot, worker in workers.items():
                config.note(f"worker {slot}: {worker.get('/readyz')} {worker.metric('worker_assigned_partitions')}")
            raise
        for slot, worker in workers.items():
            assert worker.terminate() == 0, f"worker {slot} SIGTERM exit code"
        summary = audit(stack, corpus, feed)
    finally:
        for worker in stack.workers:
            worker.kill()
        redis.stop()
        kafka.stop()
    summary.update(
        broker=kafka.kind,
        group_protocol=config.group_protocol,
        kills=kills,
        twin_fencings=fencings,  # of worker 0 and its twin, while both ran
        zombies=zombies,  # workers frozen past their session timeout, then thawed
        redis_full=redis_full,  # times Redis refused every write for redis_full_s
        seconds=round(time.monotonic() - started, 1),
    )
    return summary


def fill_redis(address: str, seconds: float) -> None:
    """Redis at its memory limit under noeviction for `seconds`: every write refused (OOM), then room again."""
    client = redis_py.Redis.from_url(address)
    policy = client.config_get("maxmemory-policy")["maxmemory-policy"]
    assert policy == "noeviction", policy
    client.config_set("maxmemory", max(1, int(client.info("memory")["used_memory"]) // 2))
    time.sleep(seconds)
    client.config_set("maxmemory", 0)


def _fencings(*workers: WorkerProcess) -> int:
    return int(sum(w.metric("worker_producer_fenced_total") for w in workers))


def _committed(stack: Stack, ends: dict[int, int]) -> bool:
    try:
        committed = stack.committed(PARTITIONS)
    except KafkaException:
        # The look-up waits for pending transactional offsets (KIP-447): a transaction left open by a killed
        # worker holds it until the transaction times out. Not at the end yet; ask again.
        return False
    return all(committed[p] >= end for p, end in ends.items())


def _control_drained(stack: Stack) -> bool:
    """Whether no committed command is left past the group's committed offsets on the control topic: the large
    change's continue commands are all carried out (each one's transaction commits the next one)."""
    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": stack.group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        tps = [TopicPartition(stack.control_topic, p) for p in range(PARTITIONS)]
        try:
            committed = consumer.committed(tps, 10)
        except KafkaException:  # pending transactional offsets, as in `_committed`
            return False
        consumer.assign([TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)) for tp in committed])
        at_end: set[int] = set()
        deadline = time.monotonic() + 15
        while len(at_end) < PARTITIONS and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.5):
                if message.error() is None:
                    return False
                if message.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
        return len(at_end) == PARTITIONS
    finally:
        consumer.close()


def audit(stack: Stack, corpus: Corpus, feed: Feed) -> dict[str, Any]:
    messages = read_topic(stack.bootstrap, stack.output_topic, lambda m: len(m) >= len(corpus.expected), 300)
    records = [orjson.loads(m.value() or b"") for m in messages]
    # Output timestamps are the workers' produce times: the longest gap between two of them while input kept
    # coming is the longest stretch in which no worker committed output (a rebalance, a kill, the Redis restart).
    stamps = sorted(m.timestamp()[1] for m in messages)
    gaps = [(b - a, a) for a, b in itertools.pairwise(stamps)]
    longest, gap_start = max(gaps, default=(0, 0))
    copies = Counter(r["record_id"] for r in records)
    wrong = sum(1 for r in records if comparable(r) != corpus.expected.get(r["record_id"], comparable(r)))
    dead = read_topic(stack.bootstrap, stack.dlq_topic, lambda m: len(m) >= len(feed.poison), 60)
    positions: Counter[tuple[int, int]] = Counter()
    stubs: set[tuple[int, int]] = set()
    for message in dead:
        headers = dict(message.headers() or [])
        position = int(headers["dlq.source.partition"]), int(headers["dlq.source.offset"])
        positions[position] += 1
        if headers["dlq.reason"] == TOO_LARGE.encode() and message.value() is None:
            stubs.add(position)
    return {
        "events": corpus.events + corpus.duplicates + corpus.poison,
        "records": len(records),
        "expected": len(corpus.expected),
        "missing": sum(1 for rid in corpus.expected if rid not in copies),
        "duplicates": sum(n - 1 for n in copies.values()),
        "extra": sum(1 for rid in copies if rid not in corpus.expected),
        "wrong_content": wrong,
        "poison": len(feed.poison),
        "dlq_missing": len(feed.poison - set(positions)),
        "dlq_duplicates": sum(n - 1 for n in positions.values()),
        "too_large": len(stubs),
        # an oversized message not dead-lettered as a stub, or a stub for one that was not oversized
        "dlq_wrong": len(stubs ^ feed.oversized),
        "oversized": len(feed.oversized),
        "broker_hides_aborted": aborted_records_hidden(stack.bootstrap),
        "longest_output_gap_s": round(longest / 1000, 2),
        "longest_output_gap_from": time.strftime("%H:%M:%S", time.localtime(gap_start / 1000)),  # see the notes
    }


def failed(summary: dict[str, Any]) -> list[str]:
    """What the summary says is wrong. Duplicates (records and DLQ) count only on a broker that hides aborted
    transactions from read_committed readers (the embedded Tansu does not: the output of a transaction aborted
    by a SIGKILL stays visible there, next to its replay)."""
    keys = ["missing", "extra", "wrong_content", "dlq_missing", "dlq_wrong"]
    if summary["broker_hides_aborted"]:
        keys += ["duplicates", "dlq_duplicates"]
    return [f"{k}={summary[k]}" for k in keys if summary[k]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=Chaos.events)
    parser.add_argument("--rate", type=float, default=Chaos.rate)
    parser.add_argument("--kill-every", type=float, default=Chaos.kill_every)
    parser.add_argument("--group-protocol", choices=("classic", "consumer"), default=Chaos.group_protocol)
    parser.add_argument("--big-change", type=int, default=Chaos.big_change, help="users of the large change")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="gew-chaos-"))
    try:
        config = Chaos(
            events=args.events,
            rate=args.rate,
            kill_every=args.kill_every,
            group_protocol=args.group_protocol,
            big_change=args.big_change,
        )
        summary = run(config, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(orjson.dumps(summary).decode())
    return 1 if failed(summary) else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(main())
