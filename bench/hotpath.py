"""`python -m bench.hotpath [--profile]`: CPU time of the per-message work that needs neither Kafka nor Redis:
decoding (`worker.processing.decode`) and building, keying and encoding the records
(`worker.processing.records`), on the benchmark's flat and fanout corpora. No services; a few seconds.

Each corpus is run `--repeat` times in this process and the fastest pass is reported, in CPU µs
(`time.process_time`) per input message and per output record: the cost of this part of the worker without
the noise of the rest of the machine. Every valid event builds its records the way `worker.processing.processor` does
(a group change record, or the change info and one membership record per affected user), so the fan-out
figures include the records a change emits when it closes.
`--against DIR` loads a second copy of the `worker` package from another checkout (say, the main branch
unpacked with `git archive`) and alternates passes of both in this one process, so that "before" and
"after" share the machine's state: on a loaded machine even CPU time per message drifts between runs.
`--profile` prints cProfile's top functions of one more pass per corpus.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.support.corpus import generate

Message = tuple[bytes | None, list[tuple[str, str | bytes | None]]]


def load(root: Path | None) -> dict[str, ModuleType]:
    """`worker.processing.decode`, `.models` and `.records`, from `root` (another checkout) or from this one
    (None)."""
    for name in [n for n in sys.modules if n == "worker" or n.startswith("worker.")]:
        del sys.modules[name]
    if root is not None:
        sys.path.insert(0, str(root))
    try:
        return {name: _module(name) for name in ("decode", "models", "records")}
    finally:
        if root is not None:
            sys.path.remove(str(root))


def _module(name: str) -> ModuleType:
    """`worker.processing.<name>`, or `worker.<name>` in checkouts from before the packages (issue 18)."""
    try:
        return importlib.import_module(f"worker.processing.{name}")
    except ModuleNotFoundError:
        return importlib.import_module(f"worker.{name}")


def work(api: dict[str, ModuleType], messages: Sequence[Message]) -> int:
    """Decode every message and build the bytes of its records; the number of records."""
    decode: Any = api["decode"].decode
    event_type, users_modified = api["models"].Event, api["models"].UsersModified
    records_mod: Any = api["records"]
    change_info, membership_change = records_mod.change_info, records_mod.membership_change
    membership_records = getattr(records_mod, "MembershipRecords", None)  # absent in checkouts before it
    group_change, record_key, encode = records_mod.group_change, records_mod.record_key, records_mod.encode
    records = 0
    for value, headers in messages:
        decoded = decode(value, headers)
        if not isinstance(decoded, event_type):
            continue
        if isinstance(decoded.data, users_modified):
            info = change_info(decoded)
            event_id = decoded.envelope.id
            if membership_records is None:
                for user in decoded.data.affected_users:
                    record = membership_change(info, user, event_id, complete=True, late=False)
                    record_key(record)
                    encode(record)
            else:
                built = membership_records(info, complete=True, late=False)
                for user in decoded.data.affected_users:
                    built.value(user, event_id)
            records += len(decoded.data.affected_users)
        else:
            group = group_change(decoded)
            record_key(group)
            encode(group)
            records += 1
    return records


def measure(apis: Sequence[dict[str, ModuleType]], messages: Sequence[Message], repeat: int) -> list[tuple[float, int]]:
    """Per API, its fastest pass's CPU seconds and the records one pass builds; passes alternate between APIs."""
    best = [(float("inf"), 0)] * len(apis)
    for _ in range(repeat):
        for index, api in enumerate(apis):
            started = time.process_time()
            records = work(api, messages)
            best[index] = (min(best[index][0], time.process_time() - started), records)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--flat", type=int, default=30_000, help="flat events (default 30000)")
    parser.add_argument("--fanout", type=int, default=1_000, help="fanout events (default 1000)")
    parser.add_argument("--repeat", type=int, default=5, help="passes per corpus; the fastest counts (default 5)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions per corpus")
    parser.add_argument("--against", type=Path, help="another checkout whose worker package to measure alongside")
    args = parser.parse_args(argv)
    corpora = {kind: generate(kind, events, 4) for kind, events in (("flat", args.flat), ("fanout", args.fanout))}  # type: ignore[arg-type]
    apis = {"this checkout": load(None)}
    if args.against:
        apis[str(args.against)] = load(args.against)
    print("| corpus | code | input msgs | records | CPU µs/msg | CPU µs/record |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    profiles: list[tuple[str, cProfile.Profile]] = []
    for kind, corpus in corpora.items():
        messages = [(value, headers) for _partition, _key, value, headers in corpus.messages]
        for label, (seconds, records) in zip(apis, measure(list(apis.values()), messages, args.repeat), strict=True):
            per_msg, per_record = 1e6 * seconds / len(messages), 1e6 * seconds / max(1, records)
            print(f"| {kind} | {label} | {len(messages):,} | {records:,} | {per_msg:.2f} | {per_record:.3f} |")
        if args.profile:
            profiler = cProfile.Profile(time.process_time)
            profiler.runcall(work, apis["this checkout"], messages)
            profiles.append((kind, profiler))
    for kind, profiler in profiles:
        print(f"\n{kind}: cProfile, one pass, by own time")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
