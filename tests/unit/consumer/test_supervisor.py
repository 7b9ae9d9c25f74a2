"""worker.consumer.supervisor's pure parts: how many processes, their transactional ids, the restart back-off; and the
WORKER_PROCESSES setting."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from worker.config import Settings
from worker.consumer.supervisor import (
    FIRST_BACKOFF_S,
    MAX_BACKOFF_S,
    Child,
    Supervisor,
    backoff_s,
    child_transactional_id,
    process_count,
    quota_cores,
)


@pytest.mark.parametrize(
    ("cpu_max", "v1_quota", "v1_period", "cores"),
    [
        ("max 100000", None, None, None),  # v2, no quota
        ("200000 100000", None, None, 2),
        ("150000 100000", None, None, 2),  # 1.5 cores: a second process still gets half a core
        ("50000 100000", None, None, 1),  # below one core: still one
        ("400000 100000", "100000", "100000", 4),  # v2 wins over v1
        (None, "-1", "100000", None),  # v1, no quota
        (None, "300000", "100000", 3),
        (None, None, None, None),  # neither cgroup file readable
        ("garbage", None, None, None),
        ("x 100000", None, None, None),
        ("100000 0", None, None, None),
    ],
)
def test_quota_cores(cpu_max, v1_quota, v1_period, cores):
    assert quota_cores(cpu_max, v1_quota, v1_period) == cores


@pytest.mark.parametrize(
    ("setting", "quota", "affinity", "count"),
    [
        (1, 8, 8, 1),
        (3, None, 1, 3),  # a number is taken as it is
        ("auto", None, 6, 6),  # no quota: the CPUs the process may run on
        ("auto", 2, 16, 2),  # the quota of a node with 16 CPUs
        ("auto", 8, 4, 4),  # never more than the CPUs it may run on
    ],
)
def test_process_count(setting, quota, affinity, count):
    assert process_count(setting, quota, affinity) == count


def test_child_transactional_ids_are_the_configured_one_with_the_index():
    settings = Settings(transactional_id="pod-a", group_id="g")
    assert [child_transactional_id(settings, i) for i in range(3)] == ["pod-a-0", "pod-a-1", "pod-a-2"]


def test_default_child_transactional_ids_are_stable_per_pod_and_slot():
    """Without the pid of the default single-process id: a child restarted in its slot fences its old self."""
    settings = Settings(group_id="g")
    assert child_transactional_id(settings, 1) == f"g-{socket.gethostname()}-1"
    assert child_transactional_id(settings, 1) == child_transactional_id(Settings(group_id="g"), 1)


def test_backoff_doubles_from_the_first_and_is_capped():
    assert [backoff_s(n) for n in range(1, 5)] == [FIRST_BACKOFF_S * 2**i for i in range(4)]
    assert backoff_s(0) == FIRST_BACKOFF_S  # exit after a stable run
    assert backoff_s(100) == MAX_BACKOFF_S


@given(st.integers(min_value=0, max_value=10_000))
def test_backoff_is_bounded_and_never_shrinks(exits):
    assert FIRST_BACKOFF_S <= backoff_s(exits) <= backoff_s(exits + 1) <= MAX_BACKOFF_S


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), ("4", 4), ("1", 1)])
def test_worker_processes_setting(value, parsed, monkeypatch):
    monkeypatch.setenv("WORKER_PROCESSES", value)
    assert Settings().processes == parsed


@pytest.mark.parametrize("value", ["0", "-2", "many", "2.5"])
def test_worker_processes_rejects_what_is_neither_a_count_nor_auto(value, monkeypatch):
    monkeypatch.setenv("WORKER_PROCESSES", value)
    with pytest.raises(ValidationError):
        Settings()


def test_worker_processes_defaults_to_one():
    assert Settings.model_fields["processes"].default == 1


def test_a_child_that_is_down_fails_the_probes():
    child = Child(1, {})
    assert child.probe("/healthz") == "child 1: not running"
    assert child.probe("/readyz") == "child 1: not running"


def test_a_child_of_an_unconfigured_pod_keeps_the_host_network_fallback(monkeypatch, tmp_path):
    """Issue 19, defect 7: the supervisor set WORKER_TRANSACTIONAL_ID=<group>-<hostname>-<index> for every child,
    so each child counted as configured and kept its id: two host-network pods on one node (one hostname) then
    fenced each other for good. A child of a pod without the setting keeps a stable per-slot id that is still
    the default, so its first fencing gives it a unique one."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    supervisor = Supervisor(Settings(group_id="g"), 2, environ={"WORKER_GROUP_ID": "g"})
    env = supervisor.children[1].env
    monkeypatch.delenv("WORKER_TRANSACTIONAL_ID", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.transactional_id == ""  # not configured: the fallback applies (app.build: configured=False)
    assert child.effective_transactional_id() == f"g-{socket.gethostname()}-1"  # stable per slot


def test_a_child_of_a_configured_pod_gets_the_configured_id_with_its_index(monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    settings = Settings(group_id="g", transactional_id="pod-a")
    supervisor = Supervisor(settings, 2, environ={"WORKER_TRANSACTIONAL_ID": "pod-a"})
    assert supervisor.children[1].env["WORKER_TRANSACTIONAL_ID"] == "pod-a-1"
