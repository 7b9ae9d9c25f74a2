"""`python -m bench.hotpath [--profile]`: CPU time of the per-message work that needs neither Kafka nor Redis:
decoding (`worker.decode`) and building, keying and encoding the records (`worker.records`), on the
benchmark's flat and fanout corpora. No services; a few seconds.

Each corpus is run `--repeat` times in this process and the fastest pass is reported, in CPU µs
(`time.process_time`) per input message and per output record: the cost of this part of the worker without
the noise of the rest of the machine. Every valid event builds its records the way `worker.pipeline` does
(a group change record, or the change info and one membership record per affected user), so the fan-out
figures include the records a change emits when it closes.
`--profile` prints cProfile's top functions of one more pass per corpus.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Sequence

from tests.support.corpus import generate
from worker.decode import decode
from worker.models import Event, UsersModified
from worker.records import change_info, encode, group_change, membership_change, record_key

Message = tuple[bytes | None, list[tuple[str, str | bytes | None]]]


def work(messages: Sequence[Message]) -> int:
    """Decode every message and build the bytes of its records; the number of records."""
    records = 0
    for value, headers in messages:
        decoded = decode(value, headers)
        if not isinstance(decoded, Event):
            continue
        if isinstance(decoded.data, UsersModified):
            info = change_info(decoded)
            event_id = decoded.envelope.id
            for user in decoded.data.affected_users:
                record = membership_change(info, user, event_id, complete=True, late=False)
                record_key(record)
                encode(record)
                records += 1
        else:
            group = group_change(decoded)
            record_key(group)
            encode(group)
            records += 1
    return records


def measure(messages: Sequence[Message], repeat: int) -> tuple[float, int]:
    """Fastest pass's CPU seconds, and the records one pass builds."""
    best, records = float("inf"), 0
    for _ in range(repeat):
        started = time.process_time()
        records = work(messages)
        best = min(best, time.process_time() - started)
    return best, records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--flat", type=int, default=30_000, help="flat events (default 30000)")
    parser.add_argument("--fanout", type=int, default=1_000, help="fanout events (default 1000)")
    parser.add_argument("--repeat", type=int, default=5, help="passes per corpus; the fastest counts (default 5)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions per corpus")
    args = parser.parse_args(argv)
    print("| corpus | input msgs | records | CPU µs/msg | CPU µs/record |")
    print("| --- | ---: | ---: | ---: | ---: |")
    profiles: list[tuple[str, cProfile.Profile]] = []
    for kind, events in (("flat", args.flat), ("fanout", args.fanout)):
        corpus = generate(kind, events, 4)  # type: ignore[arg-type]
        messages = [(value, headers) for _partition, _key, value, headers in corpus.messages]
        seconds, records = measure(messages, args.repeat)
        per_msg, per_record = 1e6 * seconds / len(messages), 1e6 * seconds / max(1, records)
        print(f"| {kind} | {len(messages):,} | {records:,} | {per_msg:.2f} | {per_record:.3f} |")
        if args.profile:
            profiler = cProfile.Profile(time.process_time)
            profiler.runcall(work, messages)
            profiles.append((kind, profiler))
    for kind, profiler in profiles:
        print(f"\n{kind}: cProfile, one pass, by own time")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
