"""Apache Kafka for the local stack: a single-node KRaft broker (broker and controller in one JVM), run from
Apache Kafka's release jars, which Maven resolves from Maven Central (`worker/local/pom.xml`) into a cache
folder keyed by version (`~/.cache/group-events-worker/kafka-<version>/`): only the first run downloads.

The broker is what production runs, so the tests see its transaction and group behaviour: read_committed
readers skip aborted transactions, offset fetches wait for pending transactional offsets (KIP-447), and the
next-generation consumer group protocol (KIP-848) is served. Its data lives in the stack's temporary folder.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from importlib.resources import as_file, files
from pathlib import Path

KAFKA_VERSION = "4.1.1"
JAVA_MIN = 17
HEAP = "512m"
MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
COMPLETE = ".complete"  # written last: a cache folder without it is an interrupted download

# Single node: every internal topic with one replica; small internal topics start faster; rebalances
# without the initial delay. Session timeouts of the next-generation protocol are the broker's: short
# ones here, so a killed member's partitions move within seconds in tests (the defaults are 45 s).
BROKER_SETTINGS = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "8",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "8",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "group.consumer.min.session.timeout.ms": "6000",
    "group.consumer.session.timeout.ms": "6000",
    "group.consumer.min.heartbeat.interval.ms": "500",
    "group.consumer.heartbeat.interval.ms": "1000",
    "num.network.threads": "2",
    "num.io.threads": "4",
}

LOG_CONFIG = """\
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class BrokerUnavailable(RuntimeError):
    """Apache Kafka cannot run here; the message says why."""


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "group-events-worker" / f"kafka-{KAFKA_VERSION}"


def java_major(java: str = "java") -> int | None:
    """The major version of the `java` on PATH, or None without one."""
    if shutil.which(java) is None:
        return None
    try:
        text = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_java_major(text)


def parse_java_major(version_output: str) -> int | None:
    """`openjdk version "17.0.15" ...` -> 17; `java version "1.8.0_402"` -> 8."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def unavailable_reason() -> str | None:
    """Why Apache Kafka cannot run here (None: it can): Java 17+ and either the cached jars or Maven."""
    major = java_major()
    if major is None:
        return "no java on PATH"
    if major < JAVA_MIN:
        return f"java {major} on PATH, Apache Kafka {KAFKA_VERSION} needs {JAVA_MIN}+"
    if not (cache_dir() / COMPLETE).exists() and shutil.which("mvn") is None:
        return f"no mvn on PATH to fetch the Apache Kafka jars (and none cached in {cache_dir()})"
    return None


def kafka_jars() -> Path:
    """The folder of the broker's jars, resolved by Maven on first use."""
    target = cache_dir()
    if (target / COMPLETE).exists():
        return target
    if shutil.which("mvn") is None:
        raise BrokerUnavailable(f"mvn is needed to fetch Apache Kafka {KAFKA_VERSION} into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + "-", dir=target.parent))
    with as_file(files("worker.local") / "pom.xml") as pom:
        command = [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerUnavailable(
            f"mvn could not fetch Apache Kafka {KAFKA_VERSION}:\n{_tail(done.stdout + done.stderr)}"
        )
    (staging / COMPLETE).write_text(KAFKA_VERSION)
    try:
        staging.rename(target)
    except OSError:  # another process finished first: use its folder
        shutil.rmtree(staging, ignore_errors=True)
    return target


def server_properties(workdir: Path, port: int, controller_port: int) -> str:
    host = "127.0.0.1"
    settings = {
        **BROKER_SETTINGS,
        "controller.quorum.voters": f"1@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "log.dirs": str(workdir / "data"),
    }
    return "".join(f"{name}={value}\n" for name, value in settings.items())


def cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what `random-uuid` prints).
    Like Kafka's own Uuid.randomUuid, never one that starts with a dash: a command line reads it as an option."""
    while (value := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        pass
    return value


def broker_command(workdir: Path, port: int, controller_port: int) -> list[str]:
    """Write the broker's configuration into `workdir`, format its storage, and return the command that
    runs it. Raises BrokerUnavailable when formatting fails."""
    classpath = str(kafka_jars() / "*")
    config = workdir / "server.properties"
    config.write_text(server_properties(workdir, port, controller_port))
    log_config = workdir / "log4j2.properties"
    log_config.write_text(LOG_CONFIG.format(path=workdir / "broker.log"))
    java = ["java", f"-Xms{HEAP}", f"-Xmx{HEAP}", f"-Dlog4j2.configurationFile={log_config}", "-cp", classpath]
    formatted = subprocess.run(
        [*java, STORAGE_TOOL, "format", f"--cluster-id={cluster_id()}", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if formatted.returncode != 0:
        raise BrokerUnavailable(f"kafka storage format failed:\n{_tail(formatted.stdout + formatted.stderr)}")
    return [*java, MAIN, str(config)]


def log_tail(workdir: Path, lines: int = 30) -> str:
    path = workdir / "broker.log"
    return _tail(path.read_text(errors="replace"), lines) if path.exists() else "(no broker log)"


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
