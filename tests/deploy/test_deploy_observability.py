"""Prometheus scrape config, alert rules and the Grafana provisioning + dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
JOB = "group-events-worker"
Doc = dict[str, Any]
Rules = list[Doc]

# The worker's exported series: counters with _total, the Info with _info, histograms bare.
METRICS = {
    "worker_events_total",
    "worker_records_emitted_total",
    "worker_dlq_messages_total",
    "worker_open_changes",
    "worker_changes_closed_total",
    "worker_assigned_partitions",
    "worker_consumer_lag",
    "worker_batch_seconds",
    "worker_rebalances_total",
    "worker_build_info",
    "worker_ready",
    "worker_redis_used_memory_bytes",
    "worker_redis_maxmemory_bytes",
}


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\bworker_[a-z_]+", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in names}


@pytest.fixture(scope="module")
def rules() -> Rules:
    groups = read_yaml(PROM / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> Doc:
    data: Doc = json.loads((GRAFANA / "dashboards" / "group-events-worker.json").read_text())
    return data


def dashboard_exprs(dashboard: Doc) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def normalize(expr: str) -> str:
    return re.sub(r"\s+", "", expr)


def test_scrape_config_targets_every_worker_replica(metrics_port: int) -> None:
    config = read_yaml(PROM / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == JOB)
    (sd,) = job["dns_sd_configs"]
    # The compose service name (or swarm's tasks.<service>): one A record per replica.
    assert sd["names"] in (["worker"], ["tasks.worker"])
    assert sd.get("type", "SRV") == "A", "compose DNS serves A records, not SRV"
    assert sd["port"] == metrics_port
    for rule_file in config["rule_files"]:
        assert (PROM / rule_file).is_file(), rule_file


def test_every_alert_is_complete(rules: Rules) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        assert rule["expr"].strip(), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_alerts_cover_the_failure_modes(rules: Rules) -> None:
    exprs = [normalize(rule["expr"]) for rule in rules]

    def some(*needles: str) -> bool:
        return any(all(n in e for n in needles) for e in exprs)

    assert some("worker_consumer_lag", "deriv(") or some("worker_consumer_lag", "increase(")
    assert some("rate(worker_dlq_messages_total[5m])", ">0")
    assert some("rate(worker_events_total", "==0", "worker_consumer_lag", ">0")
    assert some('worker_changes_closed_total{outcome="timed_out"}', "increase(")
    assert some("worker_ready==0") and some(f'up{{job="{JOB}"}}==0')
    assert some("maxby(node)(worker_redis_used_memory_bytes)", "(worker_redis_maxmemory_bytes>0)>0.8")
    by_name = {rule["alert"]: rule for rule in rules}
    assert by_name["GroupEventsWorkerStalled"]["for"] == "15m"


def test_alerts_and_dashboard_use_only_exported_metrics(rules: Rules, dashboard: Doc) -> None:
    used = set().union(*(metric_names(rule["expr"]) for rule in rules))
    used |= set().union(*(metric_names(expr) for expr in dashboard_exprs(dashboard)))
    assert used, "no worker metric found"
    assert used <= METRICS, f"unknown metrics: {used - METRICS}"


def test_exported_metrics_match_the_worker_code() -> None:
    """METRICS above is what worker.consumer.metrics registers, so a renamed metric breaks this test."""
    from prometheus_client.metrics import MetricWrapperBase

    from worker.consumer import metrics

    suffix = {"counter": "_total", "info": "_info"}
    exported = {
        described.name + suffix.get(described.type, "")
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for described in value.describe()
    }
    assert exported >= METRICS, f"documented but not exported: {METRICS - exported}"


def test_dashboard_panels(dashboard: Doc) -> None:
    exprs = {normalize(e) for e in dashboard_exprs(dashboard)}
    for wanted in (
        "sum by (outcome)(rate(worker_events_total[1m]))",
        "sum by (schema)(rate(worker_records_emitted_total[1m]))",
        "sum by (reason)(rate(worker_dlq_messages_total[5m]))",
        "sum(worker_open_changes)",
        "max by (topic, partition)(worker_consumer_lag)",
        "histogram_quantile(0.95, sum by (le)(rate(worker_batch_seconds_bucket[5m])))",
        "sum(increase(worker_rebalances_total[5m]))",
    ):
        assert normalize(wanted) in exprs, wanted
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_panels_do_not_overlap(dashboard: Doc) -> None:
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        xs, ys = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        mine = {(x, y) for x in xs for y in ys}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_grafana_provisioning_matches_dashboard_and_compose(dashboard: Doc, compose: Doc) -> None:
    (datasource,) = read_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
    url = urlparse(datasource["url"])
    assert url.hostname in compose["services"]
    assert f"{url.port}:{url.port}" in compose["services"][url.hostname]["ports"]

    (provider,) = read_yaml(GRAFANA / "provisioning/dashboards/dashboards.yml")["providers"]
    volumes = compose["services"]["grafana"]["volumes"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in volumes}  # container path -> repo path
    dashboards_dir = mounts[provider["options"]["path"]]
    assert (ROOT / dashboards_dir / "group-events-worker.json").is_file()
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == (GRAFANA / "provisioning")


def test_alert_job_label_matches_scrape_configs(k8s_base: dict[str, Doc]) -> None:
    config = read_yaml(PROM / "prometheus.yml")
    assert JOB in {j["job_name"] for j in config["scrape_configs"]}
    # The PodMonitor takes its job label from this pod label, so the same alerts work in Kubernetes.
    monitor = k8s_base["PodMonitor"]["spec"]
    pod_labels = k8s_base["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[monitor["jobLabel"]] == JOB


promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def run_promtool(*args: str) -> None:
    command = ["promtool", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@promtool
def test_promtool_check_config() -> None:
    run_promtool("check", "config", str(PROM / "prometheus.yml"))


@promtool
def test_promtool_check_rules() -> None:
    run_promtool("check", "rules", str(PROM / "alerts.yml"))


@promtool
def test_promtool_alert_unit_tests() -> None:
    # alerts_test.yml feeds synthetic series and expects each alert to fire, or not.
    run_promtool("test", "rules", str(PROM / "alerts_test.yml"))
