"""Memory over a long run: one worker, `--events` flat events, RSS sampled as the output grows.

`python -m tests.chaos.soak [--events 1000000]` prints one JSON line: RSS (MB) of the worker process after
10k, 100k, ... processed events, and the run's duration. The worker's RSS should stay flat.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import orjson

from tests.integration.helpers import Stack, wait_for
from tests.support.corpus import generate
from worker.local.stack import start_kafka, start_redis

CHECKPOINTS = (10_000, 100_000, 250_000, 500_000, 750_000, 1_000_000)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gew-soak-"))
    kafka, redis = start_kafka(workdir), start_redis(workdir)
    stack = Stack(kafka.address, redis.address, redis, kafka, "soak-in", "soak-out", "soak-dlq", "soak", workdir)
    started = time.monotonic()
    try:
        stack.create_topics(4, 4)
        corpus = generate("flat", args.events, 4, dup_rate=0.0, poison_rate=0.0)
        stack.produce(corpus.messages)
        del corpus
        worker = stack.start_worker()
        assert worker.process is not None
        samples: dict[str, float] = {}
        for checkpoint in (c for c in CHECKPOINTS if c <= args.events):
            wait_for(lambda c=checkpoint: worker.metric("worker_events_total") >= c, 3600, f"{checkpoint} events")
            samples[f"rss_mb_at_{checkpoint}"] = round(rss_mb(worker.process.pid), 1)
        print(orjson.dumps({"events": args.events, **samples, "seconds": round(time.monotonic() - started)}).decode())
        worker.terminate()
    finally:
        for w in stack.workers:
            w.kill()
        kafka.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
