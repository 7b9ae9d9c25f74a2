"""`WORKER_PROCESSES=N`: N worker processes in one container, under this small supervisor. A Python process
uses one core; this uses every core the container may use.

Promises:
- Each child is `python -m worker run` with `WORKER_PROCESSES=1` and a few settings of its own: its own
  consumer group member, its own transactional id (`<base>-<index>`, the same for a child restarted in its
  slot, so the restart fences its previous self; without `WORKER_TRANSACTIONAL_ID` it is still the default,
  with the host-network fallback), its own health port on 127.0.0.1-reachable `:<free port>`.
  The supervisor knows nothing of the loop: it starts processes and reads their HTTP endpoints.
- One `/metrics` for all, on `WORKER_METRICS_PORT`: prometheus-client's multiprocess mode (the children
  write their samples to files in a private temporary `PROMETHEUS_MULTIPROC_DIR`; a child's live gauges are
  dropped when it exits). `/healthz` and `/readyz` ask every child's and fail when any child's fails, or
  while a child is down.
- SIGTERM (or SIGINT) is passed to every child; the supervisor exits 0 when every child exited 0 (each
  commits its last batch and closes first), 1 otherwise.
- A child that exits on its own is logged and started again after a back-off that doubles with each quick
  exit (0.5 s up to 30 s) and starts over once a child ran a minute.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from worker.config import Settings
from worker.consumer.health import ProbeServer

log = structlog.get_logger("worker.consumer.supervisor")

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STABLE_S = 60.0  # a child that ran this long starts the back-off over when it exits
PROBE_TIMEOUT_S = 2.5  # below the manifests' probe timeoutSeconds (3)
TICK_S = 0.2


# ---- pure parts ------------------------------------------------------------------------------------------


def quota_cores(cpu_max: str | None, v1_quota: str | None, v1_period: str | None) -> int | None:
    """Cores a CPU quota allows, rounded up: cgroup v2 `cpu.max` ("max 100000" or "200000 100000"), else v1
    `cfs_quota_us`/`cfs_period_us` (-1: no quota); None without a quota."""
    quota = period = None
    if cpu_max is not None:
        parts = cpu_max.split()
        if len(parts) == 2 and parts[0] != "max":
            quota, period = parts
    elif v1_quota is not None and v1_period is not None and v1_quota.strip() != "-1":
        quota, period = v1_quota, v1_period
    if quota is None or period is None:
        return None
    try:
        value, length = int(quota), int(period)
    except ValueError:
        return None
    return max(1, math.ceil(value / length)) if value > 0 and length > 0 else None


def process_count(setting: int | Literal["auto"], quota: int | None, affinity: int) -> int:
    """`WORKER_PROCESSES`: a number, or `auto` = the cores the container may use (its CPU quota, at most the
    CPUs it may run on)."""
    if setting != "auto":
        return setting
    return max(1, min(quota, affinity) if quota is not None else affinity)


def child_transactional_id(settings: Settings, index: int) -> str:
    """The configured transactional id (or `<group>-<hostname>`, stable per pod) with the child's index. Only a
    configured one is passed on as `WORKER_TRANSACTIONAL_ID`: the default reaches the child as its slot
    (`WORKER_PROCESS_INDEX`), so the child still takes a unique id at its first fencing (two host-network pods
    on one node have one hostname)."""
    base = settings.transactional_id or f"{settings.group_id}-{socket.gethostname()}"
    return f"{base}-{index}"


def backoff_s(quick_exits: int) -> float:
    """Wait before starting a child again after `quick_exits` exits in a row that came soon after a start."""
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** min(16, max(0, quick_exits - 1)))


# ---- the processes ----------------------------------------------------------------------------------------


def container_processes(setting: int | Literal["auto"]) -> int:
    return process_count(
        setting,
        quota_cores(_read(CGROUP_V2_CPU_MAX), _read(CGROUP_V1_QUOTA), _read(CGROUP_V1_PERIOD)),
        len(os.sched_getaffinity(0)),
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Child:
    index: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    started: float = 0.0
    quick_exits: int = 0
    restart_at: float | None = None  # while down: when to start it again

    def start(self) -> None:
        self.port = _free_port()
        env = {**self.env, "WORKER_METRICS_PORT": str(self.port)}
        self.process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env)
        self.started, self.restart_at = time.monotonic(), None
        log.info("child_started", child=self.index, pid=self.process.pid, port=self.port)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def probe(self, path: str) -> str | None:
        """None when the child answers 200 on `path`, else what is wrong."""
        if not self.running():
            return f"child {self.index}: not running"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=PROBE_TIMEOUT_S):
                return None
        except urllib.error.HTTPError as error:
            return f"child {self.index}: " + error.read().decode(errors="replace").strip().replace("\n", "; ")
        except OSError as error:
            return f"child {self.index}: {error}"


@dataclass
class Supervisor:
    settings: Settings
    count: int
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    def __post_init__(self) -> None:
        self.metrics_dir = tempfile.mkdtemp(prefix="gew-metrics-")
        self.children = [Child(i, self._child_env(i)) for i in range(self.count)]
        self.stopping = threading.Event()
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        self.restarts = Counter(
            "worker_child_restarts", "Worker processes started again after they exited", registry=self.registry
        )

    def _child_env(self, index: int) -> dict[str, str]:
        env = {
            **self.environ,
            "WORKER_PROCESSES": "1",
            "WORKER_PROCESS_INDEX": str(index),
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
        }
        if self.settings.transactional_id:
            env["WORKER_TRANSACTIONAL_ID"] = child_transactional_id(self.settings, index)
        return env

    def run(self) -> int:
        """Start the children, keep them running until SIGTERM/SIGINT, stop them; the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        server = ProbeServer(
            self.settings.metrics_port,
            metrics=lambda: generate_latest(self.registry),
            alive=lambda: self.problems("/healthz"),
            ready=lambda: self.problems("/readyz"),
        ).start()
        log.info("supervisor_starting", processes=self.count, port=server.port)
        try:
            for child in self.children:
                child.start()
            while not self.stopping.wait(TICK_S):
                self._tend()
            return self._stop()
        finally:
            for child in self.children:  # only after an error: _stop waited for all of them
                if child.running() and child.process is not None:
                    child.process.kill()
            server.stop()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _tend(self) -> None:
        """Notice children that exited; start them again once their back-off passed."""
        now = time.monotonic()
        for child in self.children:
            if child.process is not None and child.restart_at is None and not child.running():
                code = child.process.returncode
                mark_process_dead(child.process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
                child.quick_exits = 0 if now - child.started >= STABLE_S else child.quick_exits + 1
                delay = backoff_s(child.quick_exits)
                child.restart_at = now + delay
                log.warning("child_exited", child=child.index, pid=child.process.pid, code=code, restart_in_s=delay)
            if child.restart_at is not None and now >= child.restart_at:
                self.restarts.inc()
                child.start()

    def _stop(self) -> int:
        log.info("supervisor_stopping", processes=self.count)
        live = [c for c in self.children if c.running() and c.process is not None]
        for child in live:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_timeout_seconds + 10
        codes: dict[int, int | None] = {}
        for child in live:
            assert child.process is not None
            try:
                codes[child.index] = child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                codes[child.index] = child.process.wait()
            mark_process_dead(child.process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        clean = all(code == 0 for code in codes.values())
        log.info("supervisor_stopped", clean=clean, exit_codes=codes)
        return 0 if clean else 1

    def problems(self, path: str) -> list[str]:
        """What each child's `path` (/healthz or /readyz) says is wrong, asked in parallel."""
        with ThreadPoolExecutor(max_workers=len(self.children)) as pool:
            answers = list(pool.map(lambda child: child.probe(path), self.children))
        return [answer for answer in answers if answer]
