"""Two transactional sinks with one `transactional.id` in one process, fencing each other for `rounds` batches
each: every fencing replaces a producer (issue 19, defect 6). Run as a child process by
`test_fencing.py`, so a native crash (glibc's heap checks abort the process) is an exit status, not the end
of the test run:

    python -m tests.integration.consumer.fence_loop BOOTSTRAP ROUNDS

Prints one JSON line: the batches committed and the fencings of each sink.
"""

from __future__ import annotations

import gc
import sys
import threading
import uuid

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from worker.consumer.app import _on_kafka_error
from worker.consumer.loop import GC_THRESHOLDS
from worker.consumer.sinks import CommitUncertain, PartitionsLost, RetryBatch, TransactionalId, TransactionalSink
from worker.local.stack import create_topics
from worker.logs import KAFKA_LOGGER, configure
from worker.processing.processor import Output

BATCH = 300  # outputs per batch: deliveries in flight when the other sink fences this one


def run(bootstrap: str, rounds: int) -> dict[str, list[int]]:
    name = uuid.uuid4().hex[:8]
    create_topics(bootstrap, {f"in-{name}": 2, f"out-{name}": 4})
    # The worker's producer settings (worker/consumer/app.py): librdkafka's logs and errors through Python.
    config = {"bootstrap.servers": bootstrap, "linger.ms": 5, "error_cb": _on_kafka_error, "logger": KAFKA_LOGGER}
    fencings, committed = [0, 0], [0, 0]
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

    def sink_loop(index: int) -> None:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{name}-{index}"})
        consumer.assign([TopicPartition(f"in-{name}", index, 0)])
        ids = TransactionalId(f"shared-{name}", configured=True)
        sink = TransactionalSink(config, consumer, 5.0, f"dlq-{name}", Producer, ids)
        sink.start()
        outputs = [Output(f"out-{name}", str(i).encode(), b"x" * 300, []) for i in range(BATCH)]
        while committed[index] < rounds:
            try:
                sink.begin()
                sink.send(outputs)
                sink.commit([TopicPartition(f"in-{name}", index, committed[index] + 1)])
                committed[index] += 1
            except (RetryBatch, PartitionsLost):
                fencings[index] += 1
            except CommitUncertain:
                continue
        sink.close(5)
        consumer.close()

    threads = [threading.Thread(target=sink_loop, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"committed": committed, "fencings": fencings}


if __name__ == "__main__":
    configure("CRITICAL")
    print(orjson.dumps(run(sys.argv[1], int(sys.argv[2]))).decode(), flush=True)
