"""The deployment's security wiring (issue 20, item 3 and the Redis pod): every workload of deploy/k8s is behind
a default-deny NetworkPolicy with only the allows the service needs, the policies are valid Kubernetes objects
(kubernetes-validate, strict), the Redis ACL lets in only the worker's user and the ingest's (which may only
record its accepted times), their passwords from a Secret both sides name alike, never from a ConfigMap, the
Redis pod drops every capability, and compose's Redis has the same ACL.
tests/integration/state/test_redis_security.py runs a redis-server with this very ACL."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.conftest import read_yaml, read_yaml_all

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE, INGEST, REDIS, OVERLAY = K8S / "base", K8S / "ingest", K8S / "redis", K8S / "overlays" / "example"
WATCH = K8S / "watch"
WORKLOADS = ("Deployment", "StatefulSet")
ACL_USER = "group-events-worker"
INGEST_USER = "group-events-ingest"
# The ingest's user: the ingest's own keys, ZADD and the connection commands, nothing else.
INGEST_RULES = ["~gew:ingest:*", "resetchannels", "-@all", "+@connection", "-@dangerous", "+zadd"]


def manifests(directory: Path) -> list[dict[str, Any]]:
    """The documents a kustomization lists."""
    names = read_yaml(directory / "kustomization.yaml")["resources"]
    return [doc for name in names if not name.startswith("..") for doc in read_yaml_all(directory / name)]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items() and "matchExpressions" not in selector


def policy_for(docs: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, Any]:
    (policy,) = [
        d for d in docs if d["kind"] == "NetworkPolicy" and selects(d["spec"]["podSelector"], pod_labels(workload))
    ]
    return policy


def ports(rules: list[dict[str, Any]]) -> set[tuple[object, str]]:
    return {(port["port"], port.get("protocol", "TCP")) for rule in rules for port in rule.get("ports", [])}


def peers(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [peer for rule in rules for peer in rule.get("from", rule.get("to", []))]


def namespace_of(peer: dict[str, Any]) -> str | None:
    name: str | None = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
    return name


def container_of(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


@pytest.mark.parametrize("directory", [BASE, INGEST, REDIS, WATCH], ids=["worker", "ingest", "redis", "watch"])
def test_every_workload_is_behind_a_default_deny_network_policy(directory: Path) -> None:
    """Both policy types listed: whatever the rules do not allow, in or out, is refused."""
    docs = manifests(directory)
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    assert workloads
    for workload in workloads:
        policy = policy_for(docs, workload)
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, workload["metadata"]["name"]
        assert policy["spec"]["ingress"], "no rule at all would also refuse the probes' scrapers"


@pytest.mark.parametrize("directory", [BASE, INGEST, REDIS, WATCH], ids=["worker", "ingest", "redis", "watch"])
def test_network_policies_and_workloads_are_valid_kubernetes_objects(directory: Path) -> None:
    """Strict: an unknown or misplaced field (a policy rule a CNI would silently ignore) fails. The overlay's
    patch is checked rendered (test_the_overlays_worker_reaches_...)."""
    validate = pytest.importorskip("kubernetes_validate")
    checked = [doc for doc in manifests(directory) if doc["kind"] in ("NetworkPolicy", *WORKLOADS)]
    for doc in checked:
        validate.validate(doc, validate.latest_version(), strict=True)
    assert {doc["kind"] for doc in checked} >= {"NetworkPolicy"}


def test_the_worker_reaches_dns_kafka_and_redis_and_only_prometheus_reaches_it() -> None:
    docs = manifests(BASE)
    config = one(docs, "ConfigMap")["data"]
    policy = policy_for(docs, one(docs, "Deployment"))["spec"]
    kafka_port = int(config["WORKER_KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1])
    redis = urlsplit(config["WORKER_REDIS_URL"])
    assert {(53, "UDP"), (53, "TCP"), (kafka_port, "TCP"), (redis.port, "TCP")} == ports(policy["egress"])
    redis_namespace = redis.hostname.split(".")[1] if redis.hostname else None
    assert redis_namespace in {namespace_of(peer) for peer in peers(policy["egress"])}
    assert ports(policy["ingress"]) == {("metrics", "TCP")}
    assert [namespace_of(peer) for peer in peers(policy["ingress"])] == ["monitoring"]


def test_the_ingest_takes_the_ingress_controller_and_prometheus_and_reaches_redis_as_its_own_user() -> None:
    docs = manifests(INGEST)
    deployment = one(docs, "Deployment")
    policy = policy_for(docs, deployment)["spec"]
    assert ports(policy["ingress"]) == {("http", "TCP")}
    assert {namespace_of(peer) for peer in peers(policy["ingress"])} == {"ingress-nginx", "monitoring"}
    assert ports(policy["egress"]) == {(53, "UDP"), (53, "TCP"), (9092, "TCP"), (6379, "TCP")}
    env = {e["name"]: e for e in container_of(deployment)["env"]}
    assert env["WORKER_REDIS_USERNAME"]["value"] == INGEST_USER
    wanted = env["WORKER_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    redis = {e["name"]: e for e in container_of(one(manifests(REDIS), "StatefulSet"))["env"]}
    given = redis["REDIS_INGEST_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (wanted["name"], wanted["key"]) == (given["name"], given["key"]) and wanted["key"] != "password"


def test_the_watch_takes_prometheus_and_reaches_dns_kafka_redis_and_https_outside_the_cluster() -> None:
    docs = manifests(WATCH)
    policy = policy_for(docs, one(docs, "Deployment"))["spec"]
    assert ports(policy["ingress"]) == {("metrics", "TCP")}
    assert ports(policy["egress"]) == {(53, "UDP"), (53, "TCP"), (9092, "TCP"), (6379, "TCP"), (443, "TCP")}
    (internet,) = [peer["ipBlock"] for peer in peers(policy["egress"]) if "ipBlock" in peer]
    assert internet["cidr"] == "0.0.0.0/0" and {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(
        internet["except"]
    )


def test_redis_takes_only_the_worker_ingest_and_watch_pods_and_sends_nothing() -> None:
    docs = manifests(REDIS)
    policy = policy_for(docs, one(docs, "StatefulSet"))["spec"]
    assert policy["egress"] == []
    (peer,) = peers(policy["ingress"])
    (expression,) = peer["podSelector"]["matchExpressions"]
    names = {pod_labels(one(manifests(d), "Deployment"))["app.kubernetes.io/name"] for d in (BASE, INGEST, WATCH)}
    assert expression["key"] == "app.kubernetes.io/name" and expression["operator"] == "In"
    assert set(expression["values"]) == names
    assert namespace_of(peer) == read_yaml(OVERLAY / "kustomization.yaml")["namespace"]
    assert ports(policy["ingress"]) == {("redis", "TCP")}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_the_overlays_worker_reaches_its_brokers_and_redis_outside_the_cluster() -> None:
    rendered = subprocess.run(["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    docs = list(yaml.safe_load_all(rendered.stdout))
    config = one(docs, "ConfigMap")["data"]
    policy = policy_for(docs, one(docs, "Deployment"))["spec"]
    brokers = {int(address.rsplit(":", 1)[1]) for address in config["WORKER_KAFKA_BOOTSTRAP_SERVERS"].split(",")}
    wanted = {(port, "TCP") for port in {*brokers, urlsplit(config["WORKER_REDIS_URL"]).port}}
    assert wanted | {(53, "UDP"), (53, "TCP")} == ports(policy["egress"])
    validate = pytest.importorskip("kubernetes_validate")
    validate.validate(policy_for(docs, one(docs, "Deployment")), validate.latest_version(), strict=True)


def acl(args: list[str]) -> dict[str, list[str]]:
    """`--user <name> <rule>...` options of a redis-server command line, by user."""
    users: dict[str, list[str]] = {}
    for index, arg in enumerate(args):
        if arg == "--user":
            end = next((i for i in range(index + 1, len(args)) if args[i].startswith("--")), len(args))
            users[args[index + 1]] = args[index + 2 : end]
    return users


def worker_keys() -> set[str]:
    """The key prefixes worker/state writes, as its modules spell them."""
    text = "\n".join(path.read_text() for path in (ROOT / "worker" / "state").glob("*.py"))
    return set(re.findall(r'"(gew:[a-z]+)', text))


def test_redis_lets_in_only_the_workers_user_with_the_password_of_a_secret(k8s_base: dict[str, dict[str, Any]]) -> None:
    statefulset = one(manifests(REDIS), "StatefulSet")
    redis = container_of(statefulset)
    users = acl(redis["args"])
    assert users["default"] == ["off"]
    rules = users[ACL_USER]
    assert rules[0] == "on" and ">$(REDIS_PASSWORD)" in rules
    keys = [rule[1:] for rule in rules if rule.startswith("~")]
    assert keys == ["gew:*"] and worker_keys() and all(prefix.startswith("gew:") for prefix in worker_keys())
    assert "-@all" in rules and "-@dangerous" in rules and "+@all" not in rules and "allcommands" not in rules
    assert rules.index("-@dangerous") > rules.index("+@connection"), "later rules win"
    password = {e["name"]: e for e in redis["env"]}["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    worker = container_of(k8s_base["Deployment"])
    wanted = {e["name"]: e for e in worker["env"]}["WORKER_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (password["name"], password["key"]) == (wanted["name"], wanted["key"])
    assert not password.get("optional") and not wanted.get("optional")
    config = k8s_base["ConfigMap"]["data"]
    assert config["WORKER_REDIS_USERNAME"] == ACL_USER
    assert "WORKER_REDIS_PASSWORD" not in config and urlsplit(config["WORKER_REDIS_URL"]).password is None
    probe = " ".join(redis["readinessProbe"]["exec"]["command"])
    assert f"--user {ACL_USER}" in probe and "$REDIS_PASSWORD" in probe and "--pass" not in probe


def test_the_ingests_redis_user_may_only_zadd_the_ingests_keys() -> None:
    users = acl(container_of(one(manifests(REDIS), "StatefulSet"))["args"])
    assert users[INGEST_USER] == ["on", ">$(REDIS_INGEST_PASSWORD)", *INGEST_RULES]
    written = re.findall(r'"(gew:ingest:[^"]*)"', (ROOT / "worker" / "state" / "upstream.py").read_text())
    assert written and all(key.startswith("gew:ingest:") for key in written)


def test_the_redis_pod_drops_every_capability_and_has_no_api_token() -> None:
    statefulset = one(manifests(REDIS), "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container_of(statefulset)["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True


def test_compose_redis_has_the_same_acl_and_the_worker_its_user(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    k8s = acl(container_of(one(manifests(REDIS), "StatefulSet"))["args"])
    users = acl(redis["command"])
    env = compose["services"]["worker"]["environment"]
    password = env["WORKER_REDIS_PASSWORD"]
    assert users["default"] == ["off"]
    assert users[ACL_USER] == [rule.replace("$(REDIS_PASSWORD)", password) for rule in k8s[ACL_USER]]
    assert env["WORKER_REDIS_USERNAME"] == ACL_USER
    assert ACL_USER in " ".join(redis["healthcheck"]["test"])
    ingest = compose["services"]["ingest"]["environment"]
    assert ingest["WORKER_REDIS_USERNAME"] == INGEST_USER
    assert users[INGEST_USER] == ["on", ">" + ingest["WORKER_REDIS_PASSWORD"], *INGEST_RULES]


def test_the_ingests_memory_budget_fits_its_pod() -> None:
    """What the ingest's bounds let it hold at most, with its defaults (the Deployment sets none of them), stays
    under the pod's memory limit; tests/integration/ingest/test_slow_clients.py measures a flood against it."""
    from worker.config import Settings
    from worker.ingest.http import MAX_HEADER_BYTES
    from worker.ingest.producer import QUEUE_KBYTES

    idle_process = 70 * 2**20  # RSS of an idle ingest, measured: 66 MiB
    defaults = Settings()
    budget = (
        idle_process
        + defaults.ingest_max_body_reads * defaults.ingest_max_body_bytes
        + QUEUE_KBYTES * 1024
        + defaults.ingest_max_idle_connections * MAX_HEADER_BYTES
        + defaults.ingest_max_waiting * 4096  # a waiting request: its task and headers, the body gone to librdkafka
    )
    container = container_of(one(manifests(INGEST), "Deployment"))
    env = {e["name"] for e in container["env"]}
    assert not env & {"WORKER_INGEST_MAX_BODY_READS", "WORKER_INGEST_MAX_BODY_BYTES", "WORKER_INGEST_MAX_WAITING"}
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and budget < int(limit[:-2]) * 2**20 * 0.8, f"{budget / 2**20:.0f} MiB"
