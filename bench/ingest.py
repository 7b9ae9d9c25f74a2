"""`make bench-ingest`: the webhook ingest (`python -m worker ingest`) under load, on the embedded broker
(Apache Kafka where Java is present, else Tansu: `WORKER_LOCAL_BROKER` picks, as for `make run`).

1. Saturation: `wrk` (Debian package `wrk`) posts signed 1 KB CloudEvents as fast as the endpoint answers,
   over 64 keep-alive connections, cycling through 256 distinct bodies (256 keys, so every partition works).
   Accepted requests/s = 202 answers / seconds.
2. Fixed rate: `hey` (Debian package `hey`) posts the same kind of body at 2,000 requests/s (40 connections
   at 50 requests/s each) and reports the time to answer; p99 is the number.

Both generators are C/Go processes, not Python: on a 2-core machine they take less CPU per request than the
endpoint, so the endpoint is what saturates. The endpoint logs at INFO, as in production. Prints a table and a
JSON line and writes bench/RESULTS-ingest.md.

    python -m bench.ingest [--seconds 15] [--rate 2000] [--connections 64] [--ingest-env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from bench.procs import clean_environ, cpu_seconds, peak_rss_mb
from worker.ingest.secrets import sign
from worker.local.ingest_client import IngestProcess
from worker.local.stack import create_topics, free_port, start_kafka

SECRET = "bench-secret-bench-secret-bench-secret"
TOPIC = "bench.ingest"
PARTITIONS = 4
BODY_BYTES = 1024
BODIES = 256
RESULTS = Path(__file__).parent / "RESULTS-ingest.md"
BROKER_NAMES = {"kafka": "Apache Kafka", "tansu": "Tansu"}


def body(index: int) -> bytes:
    """A `group.created` CloudEvent of exactly BODY_BYTES bytes (the description pads it)."""
    event = {
        "specversion": "1.0",
        "id": f"bench-{index}",
        "source": "com.qlik/identities",
        "type": "com.qlik.v1.group.created",
        "time": "2024-05-14T12:21:11Z",
        "tenantid": "bench-tenant",
        "data": {"id": f"group-{index}", "name": f"Group {index}", "status": "active", "description": ""},
    }
    unpadded = len(orjson.dumps(event))
    event["data"]["description"] = "x" * (BODY_BYTES - unpadded)  # type: ignore[index]
    encoded = orjson.dumps(event)
    assert len(encoded) == BODY_BYTES
    return encoded


def wrk_script(directory: Path) -> Path:
    """A wrk Lua script that sends the bodies round robin, each with its own signature."""
    lines = ["local requests = {}"]
    for index in range(BODIES):
        raw = body(index)
        headers = f'{{["Content-Type"] = "application/cloudevents+json", ["Qlik-Signature"] = "{sign(raw, SECRET)}"}}'
        lines.append(f'requests[{index + 1}] = wrk.format("POST", nil, {headers}, {json.dumps(raw.decode())})')
    lines += [
        "local i = 0",
        "request = function()",
        f"  i = i % {BODIES} + 1",
        "  return requests[i]",
        "end",
    ]
    path = directory / "ingest.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Result:
    saturation_requests: int
    saturation_accepted_per_s: float
    saturation_non_2xx: int
    saturation_p99_ms: float
    fixed_rate: int
    fixed_achieved_per_s: float
    fixed_p50_ms: float
    fixed_p99_ms: float
    fixed_non_202: int
    ingest_cpu_s: float
    broker_cpu_s: float
    ingest_peak_rss_mb: float


def run_wrk(url: str, script: Path, seconds: int, connections: int) -> tuple[int, int, float]:
    """(requests, non-2xx answers, p99 ms) of a saturation run."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(non_2xx[1]) if non_2xx else 0) + (sum(int(g) for g in errors.groups()) if errors else 0)
    return requests, failed, _ms(re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out))


def _ms(match: re.Match[str] | None) -> float:
    if match is None:
        return float("nan")
    return float(match[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]


def run_hey(url: str, directory: Path, seconds: int, rate: int) -> tuple[float, float, float, int]:
    """(achieved requests/s, p50 ms, p99 ms, answers other than 202) at a fixed rate."""
    raw = body(0)
    path = directory / "body.json"
    path.write_bytes(raw)
    workers = 40
    command = [
        "hey", "-z", f"{seconds}s", "-c", str(workers), "-q", str(rate // workers), "-m", "POST",
        "-T", "application/cloudevents+json", "-H", f"Qlik-Signature: {sign(raw, SECRET)}", "-D", str(path), url,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    achieved = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = float(re.search(r"50%+ in ([\d.]+) secs", out)[1]) * 1000  # type: ignore[index]
    p99 = float(re.search(r"99%+ in ([\d.]+) secs", out)[1]) * 1000  # type: ignore[index]
    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    return achieved, p50, p99, sum(n for code, n in statuses.items() if code != 202)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="per run (default: 15)")
    parser.add_argument("--rate", type=int, default=2000, help="requests/s of the fixed-rate run (default: 2000)")
    parser.add_argument("--connections", type=int, default=64, help="of the saturation run (default: 64)")
    parser.add_argument(
        "--ingest-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra WORKER_* setting for the ingest, e.g. WORKER_KAFKA_LINGER_MS=1 (repeatable)",
    )
    args = parser.parse_args(argv)
    if missing := [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]:
        print(f"needs {' and '.join(missing)}: apt-get install {' '.join(missing)}", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="gew-bench-ingest-"))
    kafka = start_kafka(directory)
    ingest: IngestProcess | None = None
    try:
        create_topics(kafka.address, {TOPIC: PARTITIONS})
        env = {
            **clean_environ(),
            "WORKER_KAFKA_BOOTSTRAP_SERVERS": kafka.address,
            "WORKER_INGEST_TOPIC": TOPIC,
            "WORKER_INGEST_SECRETS": SECRET,
            **dict(item.split("=", 1) for item in args.ingest_env),
        }
        ingest = IngestProcess(env, free_port(), directory / "ingest.log").start()
        assert ingest.process is not None
        url = ingest.webhook_url
        run_wrk(url, wrk_script(directory), 3, args.connections)  # warm up: connections, metadata, batches
        cpu = cpu_seconds(ingest.process.pid), cpu_seconds(kafka.process.pid)
        requests, failed, sat_p99 = run_wrk(url, wrk_script(directory), args.seconds, args.connections)
        achieved, p50, p99, non_202 = run_hey(url, directory, args.seconds, args.rate)
        result = Result(
            saturation_requests=requests,
            saturation_accepted_per_s=round((requests - failed) / args.seconds, 1),
            saturation_non_2xx=failed,
            saturation_p99_ms=round(sat_p99, 1),
            fixed_rate=args.rate,
            fixed_achieved_per_s=round(achieved, 1),
            fixed_p50_ms=round(p50, 1),
            fixed_p99_ms=round(p99, 1),
            fixed_non_202=non_202,
            ingest_cpu_s=round(cpu_seconds(ingest.process.pid) - cpu[0], 1),
            broker_cpu_s=round(cpu_seconds(kafka.process.pid) - cpu[1], 1),
            ingest_peak_rss_mb=round(peak_rss_mb(ingest.process.pid), 1),
        )
    finally:
        if ingest is not None:
            ingest.stop()
        kafka.stop()
        shutil.rmtree(directory, ignore_errors=True)
    report(result, args.seconds, BROKER_NAMES.get(kafka.kind, kafka.kind))
    return 0 if result.saturation_non_2xx == 0 and result.fixed_non_202 == 0 else 1


def report(result: Result, seconds: int, broker: str) -> None:
    rows = [
        ("accepted requests/s at saturation (wrk, 64 connections)", f"{result.saturation_accepted_per_s:,.0f}"),
        ("p99 at saturation", f"{result.saturation_p99_ms} ms"),
        ("answers other than 2xx at saturation", str(result.saturation_non_2xx)),
        (f"achieved rate at {result.fixed_rate:,} requests/s (hey)", f"{result.fixed_achieved_per_s:,.0f}"),
        (f"p50 / p99 at {result.fixed_rate:,} requests/s", f"{result.fixed_p50_ms} / {result.fixed_p99_ms} ms"),
        ("answers other than 202 at the fixed rate", str(result.fixed_non_202)),
        ("CPU of the ingest / the broker over both runs", f"{result.ingest_cpu_s} s / {result.broker_cpu_s} s"),
        ("peak RSS of the ingest", f"{result.ingest_peak_rss_mb} MB"),
    ]
    table = "\n".join(["| measure | value |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)])
    RESULTS.write_text(
        "# Ingest benchmark\n\n"
        f"`make bench-ingest`: signed {BODY_BYTES}-byte CloudEvents posted to `python -m worker ingest` on the "
        f"embedded {broker} broker ({PARTITIONS} partitions), {seconds} s per run, load generator, endpoint and "
        "broker on the same 2 cores. Method: bench/ingest.py.\n\n" + table + "\n"
    )
    print(table)
    print(json.dumps({"bench": "ingest", "broker": broker, **asdict(result)}))


if __name__ == "__main__":
    raise SystemExit(main())
