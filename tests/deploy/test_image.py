"""The built image itself (`built_image`, once per session): its config as a runtime reads it, its commands
run inside it as its user, and `python -m worker run` inside it against a real broker and Redis.

Every container here has a read-only root filesystem and, writable, only what the Kubernetes Deployment
mounts (its emptyDir volumes): what works here works with `readOnlyRootFilesystem: true`. It shares the
host's network (buildah's chroot isolation always does; Docker is told `--network host`), so the broker,
Redis and the worker's ports are all on 127.0.0.1.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import signal
import subprocess
import tempfile
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.deploy.conftest import ROOT, BuiltImage
from tests.integration.helpers import Stack, WorkerProcess
from worker.local.stack import free_port, start_kafka, start_redis

SEED = ROOT / "tests/fixtures/seed-events/group-created.json"
# The first test here also waits for the image build: on a fresh machine a debootstrap base and a pip install.
pytestmark = pytest.mark.timeout(900)
CLOUDEVENTS_JSON = [("content-type", b"application/cloudevents+json")]


@dataclass
class Container:
    """One container of the image: read-only root, host network, `writable` paths on tmpfs, `env` added to the
    image's. `run` starts its main process; `exec` runs another command beside it, as a health check does."""

    image: BuiltImage
    env: dict[str, str]
    writable: list[str]
    name: str = field(default_factory=lambda: f"gew-test-{uuid.uuid4().hex[:8]}")
    main: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)
    rootfs: Path = field(init=False)
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        if self.image.tool == "buildah":
            # `buildah run` has no --read-only: the container's root is remounted read-only, except /run, which
            # buildah writes to on the host side of every run (it creates and removes /run/.containerenv; it
            # cannot remove it from a read-only root). /run becomes an empty directory only root may write to.
            self._buildah("from", "--quiet", "--name", self.name, self.image.ref)
            self.rootfs = Path(self._buildah("mount", self.name))
            self.run_dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-run-"))
            self.run_dir.chmod(0o755)
            subprocess.run(["mount", "--bind", str(self.run_dir), str(self.rootfs / "run")], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(self.rootfs)], check=True)

    def _buildah(self, *args: str) -> str:
        return subprocess.run(["buildah", *args], capture_output=True, text=True, check=True).stdout.strip()

    def _command(self, argv: list[str], *, main: bool) -> list[str]:
        env = [arg for key, value in self.env.items() for arg in ("--env", f"{key}={value}")]
        if self.image.tool == "buildah":
            mounts = [f"--mount=type=tmpfs,destination={path}" for path in self.writable]
            return ["buildah", "run", "--isolation", "chroot", *mounts, *env, self.name, "--", *argv]
        if not main:
            return ["docker", "exec", *env, self.name, *argv]
        mounts = [f"--tmpfs={path}" for path in self.writable]
        options = ["--name", self.name, "--read-only", "--network", "host", "--interactive", *mounts, *env]
        return ["docker", "run", *options, "--entrypoint", argv[0], self.image.ref, *argv[1:]]

    def run(self, argv: list[str], stdout: Any = subprocess.PIPE) -> subprocess.Popen[bytes]:
        self.argv = argv
        command = self._command(argv, main=True)
        self.main = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.STDOUT)
        return self.main

    def exec(self, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self._command(argv, main=False), capture_output=True, timeout=60)

    def stop(self, timeout: float = 60) -> int:
        """The image's STOPSIGNAL to the main process, as `docker stop` or the kubelet sends it; its exit code."""
        assert self.main is not None
        if self.image.tool == "docker":
            subprocess.run(["docker", "stop", "--time", str(int(timeout)), self.name], capture_output=True)
        else:
            pid = self._command_pid()
            assert pid is not None, f"no process {self.argv} below buildah run ({self.main.pid})"
            os.kill(pid, signal.Signals[self.image.config["StopSignal"]])
        return self.main.wait(timeout)

    def _command_pid(self) -> int | None:
        """Under chroot isolation the command is a host process below `buildah run`: found by its arguments."""
        assert self.main is not None
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # pid (comm) state ppid ...
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(stat.parent.name))
        todo = [self.main.pid]
        while todo:
            pid = todo.pop()
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
            except OSError:
                continue
            if cmdline[1:] == self.argv[1:] and Path(cmdline[0]).name == self.argv[0]:
                return pid
            todo += children.get(pid, [])
        return None

    def remove(self) -> None:
        if self.main is not None and self.main.poll() is None:
            if self.image.tool == "buildah" and (pid := self._command_pid()) is not None:
                os.kill(pid, signal.SIGKILL)
            self.main.kill()
            self.main.wait(30)
        if self.image.tool == "buildah":
            subprocess.run(["umount", str(self.rootfs / "run")], check=True)
            self.run_dir.rmdir()
            self._buildah("rm", self.name)
        else:
            subprocess.run(["docker", "rm", "--force", self.name], capture_output=True, timeout=60)


def writable_paths(k8s_base: dict[str, dict[str, Any]]) -> list[str]:
    """The worker container's emptyDir mounts in the Deployment: all it may write to."""
    pod = k8s_base["Deployment"]["spec"]["template"]["spec"]
    empty_dirs = {volume["name"] for volume in pod.get("volumes", []) if "emptyDir" in volume}
    worker = next(c for c in pod["containers"] if c["name"] == "worker")
    return [mount["mountPath"] for mount in worker.get("volumeMounts", []) if mount["name"] in empty_dirs]


@pytest.fixture
def container(built_image: BuiltImage, k8s_base: dict[str, dict[str, Any]]) -> Iterator[Any]:
    """A factory: `container(**env)` is a fresh container, removed after the test."""
    made: list[Container] = []

    def make(**env: str) -> Container:
        made.append(Container(built_image, env, writable_paths(k8s_base)))
        return made[-1]

    yield make
    for each in made:
        each.remove()


def run_to_end(box: Container, argv: list[str], stdin: bytes = b"") -> tuple[int, str]:
    out, _ = box.run(argv).communicate(stdin, timeout=120)
    assert box.main is not None
    return box.main.returncode, out.decode(errors="replace")


def entrypoint(image: BuiltImage, *args: str) -> list[str]:
    return [*image.config["Entrypoint"], *args]


# ---- the config ----------------------------------------------------------------------------------------------


def test_runs_as_a_numeric_non_root_user(built_image: BuiltImage, container: Any) -> None:
    uid, _, gid = built_image.config["User"].partition(":")
    assert uid.isdigit() and int(uid) != 0, built_image.config["User"]
    code, out = run_to_end(container(), ["python", "-c", "import os; print(os.getuid(), os.getgid())"])
    assert (code, out.split()) == (0, [uid, gid or uid])


def test_entrypoint_command_and_stop_signal(built_image: BuiltImage) -> None:
    assert built_image.config["Entrypoint"] == ["python", "-m", "worker"]
    assert built_image.config["Cmd"] == ["run"]
    assert built_image.config["StopSignal"] == "SIGTERM"


def test_healthcheck_and_exposed_port_follow_the_metrics_port(built_image: BuiltImage, metrics_port: int) -> None:
    check = built_image.config["Healthcheck"]
    assert check["Test"][:3] == ["CMD", "python", "-c"] and "/healthz" in check["Test"][3]
    assert check["Timeout"] > 0 and check["Interval"] > 0 and check["Retries"] > 0
    assert set(built_image.config["ExposedPorts"]) == {f"{metrics_port}/tcp"}
    assert f"WORKER_METRICS_PORT={metrics_port}" in built_image.config["Env"]


def test_oci_labels_carry_the_version(built_image: BuiltImage) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    labels = built_image.config["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.title"] == "group-events-worker"
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if revision.returncode == 0:
        assert labels["org.opencontainers.image.revision"] == revision.stdout.strip()


# ---- commands inside the image -------------------------------------------------------------------------------


def test_help_and_version(built_image: BuiltImage, container: Any) -> None:
    code, out = run_to_end(container(), entrypoint(built_image, "--help"))
    assert code == 0 and "usage: python -m worker" in out and "validate" in out, out
    version = built_image.config["Labels"]["org.opencontainers.image.version"]
    assert run_to_end(container(), entrypoint(built_image, "--version")) == (0, f"{version}\n")


def test_validate_a_seed_event(built_image: BuiltImage, container: Any) -> None:
    code, out = run_to_end(container(), entrypoint(built_image, "validate", "-"), SEED.read_bytes())
    assert code == 0, out
    # The container's stdout and stderr come as one stream: the records (stdout) and the summary (stderr).
    records = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(records) == 1 and "1 events (1 valid" in out, out
    record = records[0]
    assert record["schema"] == "group_change/v1"
    assert record["event_id"] == json.loads(SEED.read_text())["id"]


def test_nothing_is_writable_for_the_worker(container: Any, k8s_base: dict[str, dict[str, Any]]) -> None:
    """The runs here prove nothing about writes unless writing really fails: the root is read-only (EROFS;
    /run, which buildah keeps writable for itself, is root's: EACCES). /dev/shm, which every runtime mounts,
    is not probed."""
    paths = [p for p in ("/", "/tmp", "/var/tmp", "/opt/venv", "/etc", "/run") if p not in writable_paths(k8s_base)]
    probe = "import sys\nfor p in sys.argv[1:]:\n  try: open(p + '/probe', 'w')\n  except OSError as e: print(e.errno)"
    code, out = run_to_end(container(), ["python", "-c", probe, *paths])
    assert code == 0 and len(out.split()) == len(paths), out
    assert set(out.split()) <= {str(errno.EROFS), str(errno.EACCES)}, out
    assert out.split()[0] == str(errno.EROFS), "the root filesystem is not read-only"


# ---- the worker inside the image, on a real broker and Redis ------------------------------------------------


@pytest.fixture(scope="module")
def services(built_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A broker and Redis on the host's 127.0.0.1 (after the image, so a skip starts neither)."""
    kafka = start_kafka(tmp_path_factory.mktemp("kafka"))
    redis = start_redis(tmp_path_factory.mktemp("redis"))
    yield kafka.address, redis.address
    redis.stop()
    kafka.stop()


@pytest.fixture
def stack(services: tuple[str, str], tmp_path: Path) -> Stack:
    name = uuid.uuid4().hex[:10]
    s = Stack(
        bootstrap=services[0],
        redis_url=services[1],
        redis_service=None,
        kafka_service=None,
        input_topic=f"in-{name}",
        output_topic=f"out-{name}",
        dlq_topic=f"dlq-{name}",
        group_id=f"group-{name}",
        workdir=tmp_path,
    )
    s.create_topics(input_partitions=1, output_partitions=1)
    return s


def start_in_image(box: Container, command: list[str], port: int, log: Path) -> WorkerProcess:
    """A worker process (the integration tests' handle: get, wait_ready, log) that runs inside `box`."""
    worker = WorkerProcess(box.env, log, port)
    with log.open("ab") as out:
        worker.process = box.run(command, stdout=out)
    return worker


def test_worker_runs_in_the_image(built_image: BuiltImage, container: Any, stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    env = stack.worker_env(WORKER_METRICS_PORT=str(port), WORKER_TRANSACTIONAL_ID=f"{stack.group_id}-0")
    box = container(**env)
    worker = start_in_image(box, entrypoint(built_image, *built_image.config["Cmd"]), port, tmp_path / "worker.log")
    worker.wait_ready(90)

    stack.produce([(0, None, SEED.read_bytes(), CLOUDEVENTS_JSON)])
    records = stack.records(1)
    assert [r["event_id"] for r in records] == [json.loads(SEED.read_text())["id"]], worker.log()

    health = box.exec(built_image.config["Healthcheck"]["Test"][1:])
    assert health.returncode == 0, health.stdout + health.stderr

    assert box.stop() == 0, worker.log()
    assert stack.committed(1) == [1], worker.log()
    assert "Traceback" not in worker.log()


def test_ingest_in_the_image_accepts_a_signed_seed_event(
    built_image: BuiltImage, container: Any, stack: Stack, tmp_path: Path
) -> None:
    code, out = run_to_end(container(), entrypoint(built_image, "ingest", "--help"))
    if code != 0 and "invalid choice: 'ingest'" in out:
        pytest.skip("this build has no `python -m worker ingest`")
    assert code == 0, out
    port, secret = free_port(), uuid.uuid4().hex  # 32 characters, the shortest secret Qlik takes
    env = stack.worker_env(WORKER_INGEST_PORT=str(port), WORKER_INGEST_SECRETS=secret)
    box = container(**env)
    ingest = start_in_image(box, entrypoint(built_image, "ingest"), port, tmp_path / "ingest.log")
    ingest.wait_ready(90)

    body = SEED.read_bytes()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/qlik",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Qlik-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, answer = response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        status, answer = error.code, error.read().decode()
    assert status == 202, (answer, ingest.log())
    assert answer["topic"] == stack.input_topic
    stored = stack.read(stack.input_topic, lambda m: len(m) >= 1, 30)
    assert [m.value() for m in stored] == [body]
    assert box.stop() == 0, ingest.log()
