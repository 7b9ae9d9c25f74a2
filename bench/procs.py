"""Child processes of the benchmark: the worker and the passthrough, their logs, metrics, memory and CPU,
and the py-spy profiler attached to them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from worker.local.stack import free_port

FAST_GROUP = {
    "WORKER_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "WORKER_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
    "WORKER_KAFKA_MAX_POLL_INTERVAL_MS": "10000",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def clean_environ() -> dict[str, str]:
    """This environment without any WORKER_* setting of the caller's own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a process (all its threads) so far, or of one of its threads (`thread`: its id;
    the main thread's is the pid); 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15 of stat)


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set size) of a running process in MiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None  # metrics port (the worker)

    @classmethod
    def start(
        cls,
        name: str,
        command: list[str],
        env: dict[str, str],
        log_path: Path,
        port: int | None,
        cwd: Path | None = None,
    ) -> Child:
        """`cwd`: where `python -m` finds the packages first (another checkout), else this directory."""
        with log_path.open("ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        return cls(name, process, log_path, port)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_events(self, event: str) -> list[dict[str, object]]:
        """JSON log lines with this `event` (structlog's and the passthrough's)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f'"{event}"' not in line or not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event:
                found.append(entry)
        return found

    def wait_assigned(self, timeout: float = 60) -> float:
        """Epoch seconds at which the first `partitions_assigned` was logged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            entries = self.log_events("partitions_assigned")
            if entries:
                stamp = entries[0].get("timestamp")
                if isinstance(stamp, str):
                    return datetime.fromisoformat(stamp).timestamp()
                return time.time()
            time.sleep(0.01)
        raise RuntimeError(f"{self.name}: no partitions assigned within {timeout}s:\n{self.tail()}")

    def metrics(self) -> dict[str, float]:
        """Prometheus samples summed over labels, by sample name; empty when unreachable."""
        if self.port is None:
            return {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            try:
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
        return out

    def stop(self, timeout: float = 40) -> int | None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def control_topic(group: str) -> str:
    """The control topic of one worker run: its own, so no run reads another's timeout or continue commands
    (the worker subscribes to it next to the input; it must exist before the worker starts)."""
    return f"{group}-control"


def start_worker(
    name: str,
    *,
    bootstrap: str,
    redis_url: str,
    input_topic: str,
    output_topic: str,
    dlq_topic: str,
    group: str,
    guarantee: str,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    root: Path | None = None,
) -> Child:
    """`root`: another checkout to run the worker from (its `worker` and `bench` packages), else this one."""
    port = free_port()
    env = {
        **clean_environ(),
        "WORKER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "WORKER_REDIS_URL": redis_url,
        "WORKER_INPUT_TOPICS": input_topic,
        "WORKER_OUTPUT_TOPIC": output_topic,
        "WORKER_DLQ_TOPIC": dlq_topic,
        "WORKER_GROUP_ID": group,
        "WORKER_CONTROL_TOPIC": control_topic(group),
        "WORKER_PROCESSING_GUARANTEE": guarantee,
        "WORKER_TRANSACTIONAL_ID": f"{group}-0",
        "WORKER_METRICS_PORT": str(port),
        "WORKER_LOG_LEVEL": "INFO",
        **FAST_GROUP,
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "bench.counted_worker", "run"]
    return Child.start(name, command, env, log_path, port, root)


def start_passthrough(
    name: str,
    *,
    bootstrap: str,
    input_topic: str,
    output_topic: str,
    group: str,
    log_path: Path,
    consumer: dict[str, str] | None = None,
) -> Child:
    command = [sys.executable, "-m", "bench.passthrough", "--bootstrap", bootstrap, "--input", input_topic]
    command += ["--output", output_topic, "--group", group]
    for setting in (consumer or {}).items():
        command += ["--consumer", "=".join(setting)]
    return Child.start(name, command, clean_environ(), log_path, None)


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if os.access(found, os.X_OK) else None


@dataclass
class Profiler:
    """py-spy recording a running process: `idle` includes waiting threads (wall time), else CPU samples."""

    process: subprocess.Popen[bytes]
    output: Path
    log_path: Path

    @classmethod
    def attach(cls, pid: int, output: Path, *, idle: bool, rate: int = 200) -> Profiler | None:
        binary = py_spy()
        if binary is None:
            return None
        output.unlink(missing_ok=True)
        command = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads"]
        command += ["--nonblocking", "--output", str(output), *(["--idle"] if idle else [])]
        log_path = output.with_suffix(".log")
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        return cls(process, output, log_path)

    def stop(self) -> bool:
        """Stop recording (py-spy writes its file on SIGINT); True when the file is there."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.output.exists() and self.output.stat().st_size > 0

    def error(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()[-500:]
        except OSError:
            return ""
