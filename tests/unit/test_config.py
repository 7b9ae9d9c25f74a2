"""worker.config: WORKER_* environment -> validated Settings, readable errors, and librdkafka overrides per role."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from worker.config import CONSUMER_ONLY, PRODUCER_ONLY, ConfigError, Settings, describe_errors


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No WORKER_* variable of the machine running the tests leaks in."""
    for key in list(os.environ):
        if key.startswith("WORKER_"):
            monkeypatch.delenv(key)


def test_defaults():
    settings = Settings()
    assert settings.kafka_bootstrap_servers == "localhost:9092"
    assert settings.input_topics == ["qlik.group-events"]
    assert settings.output_topic == "group-membership-changes"
    assert settings.dlq_topic == "qlik.group-events.dlq"
    assert settings.group_id == "group-events-worker"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.metrics_port == 9400
    assert settings.processing_guarantee == "exactly_once"
    assert settings.log_level == "INFO"
    assert settings.batch_timeout_seconds == 900
    assert settings.dedupe_ttl_seconds == 86_400
    assert settings.transactional_id == ""


def test_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("WORKER_METRICS_PORT", "9500")
    monkeypatch.setenv("WORKER_PROCESSING_GUARANTEE", "at_least_once")
    monkeypatch.setenv("WORKER_LOG_LEVEL", "debug")
    monkeypatch.setenv("WORKER_BATCH_TIMEOUT_SECONDS", "1.5")
    settings = Settings()
    assert (settings.metrics_port, settings.processing_guarantee) == (9500, "at_least_once")
    assert (settings.log_level, settings.batch_timeout_seconds) == ("DEBUG", 1.5)


@pytest.mark.parametrize(
    ("raw", "topics"),
    [("a, b,,c", ["a", "b", "c"]), ("single", ["single"]), (" spaced ,", ["spaced"])],
)
def test_input_topics_are_a_comma_separated_list(monkeypatch, raw, topics):
    monkeypatch.setenv("WORKER_INPUT_TOPICS", raw)
    assert Settings().input_topics == topics


@pytest.mark.parametrize("raw", ["", " , ,", ","])
def test_empty_input_topics_are_rejected(monkeypatch, raw):
    monkeypatch.setenv("WORKER_INPUT_TOPICS", raw)
    with pytest.raises(ValidationError) as error:
        Settings()
    text = describe_errors(error.value)
    assert "WORKER_INPUT_TOPICS" in text and "at least one input topic" in text


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WORKER_METRICS_PORT", "abc"),
        ("WORKER_METRICS_PORT", "70000"),
        ("WORKER_PROCESSING_GUARANTEE", "maybe"),
        ("WORKER_LOG_LEVEL", "chatty"),
        ("WORKER_BATCH_SIZE", "0"),
        ("WORKER_BATCH_TIMEOUT_SECONDS", "-1"),
        ("WORKER_DEDUPE_TTL_SECONDS", "soon"),
    ],
)
def test_bad_values_raise_and_describe_errors_names_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as error:
        Settings()
    text = describe_errors(error.value)
    assert text.startswith("invalid configuration:")
    assert variable in text
    assert repr(value).lower() in text.lower()  # the value as given (log level upper-cased first)


def test_describe_errors_lists_every_bad_variable(monkeypatch):
    monkeypatch.setenv("WORKER_METRICS_PORT", "abc")
    monkeypatch.setenv("WORKER_PROCESSING_GUARANTEE", "maybe")
    with pytest.raises(ValidationError) as error:
        Settings()
    lines = describe_errors(error.value).splitlines()[1:]
    assert len(lines) == 2
    assert {line.split(":")[0].strip() for line in lines} == {"WORKER_METRICS_PORT", "WORKER_PROCESSING_GUARANTEE"}


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.metrics_port = 1  # type: ignore[misc]


# --- librdkafka overrides -----------------------------------------------------------------------------------------

KAFKA_ENV = {
    "WORKER_KAFKA_BOOTSTRAP_SERVERS": "broker-1:9092,broker-2:9092",
    "WORKER_KAFKA_SASL_MECHANISM": "PLAIN",
    "WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "WORKER_KAFKA_SESSION_TIMEOUT_MS": "45000",
    "WORKER_KAFKA_AUTO_OFFSET_RESET": "earliest",
    "WORKER_KAFKA_TRANSACTION_TIMEOUT_MS": "60000",
    "WORKER_KAFKA_LINGER_MS": "5",
    "WORKER_METRICS_PORT": "9400",  # not a Kafka setting
    "OTHER_KAFKA_THING": "x",
}


def test_kafka_overrides_map_variables_to_librdkafka_names(monkeypatch):
    monkeypatch.setenv("WORKER_KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    overrides = Settings().kafka_overrides(environ=KAFKA_ENV)
    assert overrides == {
        "bootstrap.servers": "broker-1:9092,broker-2:9092",
        "sasl.mechanism": "PLAIN",
        "security.protocol": "SASL_SSL",
        "session.timeout.ms": "45000",
        "auto.offset.reset": "earliest",
        "transaction.timeout.ms": "60000",
        "linger.ms": "5",
    }


def test_kafka_overrides_always_include_bootstrap_servers():
    assert Settings().kafka_overrides(environ={}) == {"bootstrap.servers": "localhost:9092"}
    assert Settings().kafka_overrides("consumer", environ={})["bootstrap.servers"] == "localhost:9092"


def test_kafka_overrides_read_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("WORKER_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    assert Settings().kafka_overrides("producer")["sasl.mechanism"] == "SCRAM-SHA-512"


def test_consumer_only_settings_are_not_given_to_the_producer():
    overrides = Settings().kafka_overrides("producer", environ=KAFKA_ENV)
    assert "session.timeout.ms" not in overrides and "auto.offset.reset" not in overrides
    assert overrides["transaction.timeout.ms"] == "60000" and overrides["linger.ms"] == "5"
    assert overrides["sasl.mechanism"] == "PLAIN"


def test_producer_only_settings_are_not_given_to_the_consumer():
    overrides = Settings().kafka_overrides("consumer", environ=KAFKA_ENV)
    assert "transaction.timeout.ms" not in overrides and "linger.ms" not in overrides
    assert overrides["session.timeout.ms"] == "45000" and overrides["auto.offset.reset"] == "earliest"
    assert overrides["sasl.mechanism"] == "PLAIN"


@pytest.mark.parametrize(
    "name",
    ["group.instance.id", "max.poll.interval.ms", "enable.auto.commit", "isolation.level", "fetch.min.bytes"],
)
def test_more_consumer_only_names(name):
    env = {"WORKER_KAFKA_" + name.upper().replace(".", "_"): "1"}
    assert name not in Settings().kafka_overrides("producer", environ=env)
    assert name in Settings().kafka_overrides("consumer", environ=env)
    assert name.startswith(CONSUMER_ONLY) and not name.startswith(PRODUCER_ONLY)


@pytest.mark.parametrize(
    "name",
    ["transactional.id", "enable.idempotence", "acks", "compression.type", "message.timeout.ms", "batch.size"],
)
def test_more_producer_only_names(name):
    env = {"WORKER_KAFKA_" + name.upper().replace(".", "_"): "1"}
    assert name not in Settings().kafka_overrides("consumer", environ=env)
    assert name in Settings().kafka_overrides("producer", environ=env)


@pytest.mark.parametrize("name", ["client.id", "socket.timeout.ms", "ssl.ca.location", "sasl.username"])
def test_settings_of_both_roles_go_to_both(name):
    env = {"WORKER_KAFKA_" + name.upper().replace(".", "_"): "v"}
    for role in ("consumer", "producer", "any"):
        assert Settings().kafka_overrides(role, environ=env)[name] == "v"


@pytest.mark.parametrize("name", ["retry.backoff.ms", "retry.backoff.max.ms"])
def test_global_retry_backoff_goes_to_the_consumer_too(name):
    env = {"WORKER_KAFKA_" + name.upper().replace(".", "_"): "250"}
    assert Settings().kafka_overrides("consumer", environ=env)[name] == "250"


def test_effective_transactional_id(monkeypatch):
    assert Settings().effective_transactional_id().startswith("group-events-worker-")
    monkeypatch.setenv("WORKER_TRANSACTIONAL_ID", "fixed-id")
    assert Settings().effective_transactional_id() == "fixed-id"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WORKER_KAFKA_ENABLE_AUTO_COMMIT", "true"),
        ("WORKER_KAFKA_ENABLE_AUTO_OFFSET_STORE", "true"),
        ("WORKER_KAFKA_ISOLATION_LEVEL", "read_uncommitted"),
        ("WORKER_KAFKA_PARTITION_ASSIGNMENT_STRATEGY", "cooperative-sticky"),
        ("WORKER_KAFKA_GROUP_PROTOCOL", "consumer"),
    ],
)
def test_an_override_of_a_guaranteed_consumer_setting_is_refused_naming_the_variable(variable, value):
    """Defect 1: `**kafka` came last, so WORKER_KAFKA_ENABLE_AUTO_COMMIT=true committed offsets before output."""
    with pytest.raises(ConfigError, match=variable):
        Settings().consumer_config({variable: value})


def test_guaranteed_consumer_settings_given_with_their_own_value_are_fine():
    config, warnings = Settings().consumer_config(
        {"WORKER_KAFKA_ENABLE_AUTO_COMMIT": "False", "WORKER_KAFKA_ISOLATION_LEVEL": "read_committed"}
    )
    assert config["enable.auto.commit"] == "false" and config["isolation.level"] == "read_committed"
    assert config["partition.assignment.strategy"] == "range" and config["group.protocol"] == "classic"
    assert warnings == []


def test_the_consumer_protocol_drops_what_the_broker_decides_with_a_warning(monkeypatch):
    monkeypatch.setenv("WORKER_GROUP_PROTOCOL", "consumer")
    env = {
        "WORKER_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "WORKER_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "WORKER_KAFKA_PARTITION_ASSIGNMENT_STRATEGY": "range",
        "WORKER_KAFKA_MAX_POLL_INTERVAL_MS": "10000",
        "WORKER_KAFKA_GROUP_REMOTE_ASSIGNOR": "uniform",
    }
    config, warnings = Settings().consumer_config(env)
    assert config["group.protocol"] == "consumer"
    assert not {"session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"} & set(config)
    assert config["max.poll.interval.ms"] == "10000" and config["group.remote.assignor"] == "uniform"
    assert sorted(w.split()[0] for w in warnings) == [
        "WORKER_KAFKA_HEARTBEAT_INTERVAL_MS",
        "WORKER_KAFKA_PARTITION_ASSIGNMENT_STRATEGY",
        "WORKER_KAFKA_SESSION_TIMEOUT_MS",
    ]


def test_the_group_protocol_is_classic_or_consumer(monkeypatch):
    monkeypatch.setenv("WORKER_GROUP_PROTOCOL", "eager")
    with pytest.raises(ValidationError):
        Settings()


# ---- the webhook secrets (issue 20: items 1 and 5) ----------------------------------------------------------

QLIK_SECRET = "q" * 32


def test_secrets_bind_to_tenants_and_a_bare_secret_to_any(monkeypatch):
    monkeypatch.setenv(
        "WORKER_INGEST_SECRETS", f"tenant-a:{'a' * 40}, tenant-a:{'b' * 40},{QLIK_SECRET}, *:c{'d' * 40}"
    )
    entries = Settings().ingest_secret_entries()
    assert entries == [("tenant-a", "a" * 40), ("tenant-a", "b" * 40), (None, QLIK_SECRET), (None, "c" + "d" * 40)]


@pytest.mark.parametrize(
    "raw",
    [
        "x",  # Qlik accepts 32 to 64 characters
        "t:" + "s" * 31,
        "s" * 65,
        "a" * 40 + "," + "b" * 20,  # a secret with a comma becomes two: the second is too short
        "not a tenant:" + "s" * 40,  # the part before ':' is no tenant id: a secret containing ':' needs '*:'
        ":" + "s" * 40,
    ],
)
def test_secrets_qlik_never_issues_are_refused_without_echoing_them(monkeypatch, raw):
    monkeypatch.setenv("WORKER_INGEST_SECRETS", raw)
    with pytest.raises(ValidationError) as error:
        Settings()
    text = describe_errors(error.value)
    assert "WORKER_INGEST_SECRETS" in text
    for piece in raw.split(","):
        secret = piece.rpartition(":")[2]
        assert secret not in text and secret not in str(error.value), "a secret was echoed"


def test_secrets_come_from_a_file_one_entry_per_line(monkeypatch, tmp_path):
    path = tmp_path / "secrets"
    path.write_text(f"# rotation: new first\ntenant-a:{'a' * 33},with-comma\n\n{QLIK_SECRET}\n")
    monkeypatch.setenv("WORKER_INGEST_SECRETS_FILE", str(path))
    assert Settings().ingest_secret_entries() == [("tenant-a", "a" * 33 + ",with-comma"), (None, QLIK_SECRET)]


def test_secrets_from_a_file_and_the_environment_at_once_are_refused(monkeypatch, tmp_path):
    (tmp_path / "secrets").write_text(QLIK_SECRET)
    monkeypatch.setenv("WORKER_INGEST_SECRETS_FILE", str(tmp_path / "secrets"))
    monkeypatch.setenv("WORKER_INGEST_SECRETS", QLIK_SECRET)
    with pytest.raises(ValidationError) as error:
        Settings()
    assert "WORKER_INGEST_SECRETS" in describe_errors(error.value) and QLIK_SECRET not in str(error.value)


def test_a_bad_secrets_file_is_refused_without_echoing_it(monkeypatch, tmp_path):
    (tmp_path / "secrets").write_text("short-secret\n")
    monkeypatch.setenv("WORKER_INGEST_SECRETS_FILE", str(tmp_path / "secrets"))
    with pytest.raises(ValidationError) as error:
        Settings()
    text = describe_errors(error.value)
    assert "WORKER_INGEST_SECRETS_FILE" in text and "line 1" in text and "short-secret" not in text
    monkeypatch.setenv("WORKER_INGEST_SECRETS_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError):
        Settings()


# ---- Redis authentication and TLS (issue 20, item 3) -----------------------------------------------------------


def test_redis_user_password_and_tls_files_become_client_options(monkeypatch):
    from worker.state.client import security_options

    assert security_options(Settings()) == {}
    monkeypatch.setenv("WORKER_REDIS_URL", "rediss://redis:6380/0")
    monkeypatch.setenv("WORKER_REDIS_USERNAME", "group-events-worker")
    monkeypatch.setenv("WORKER_REDIS_PASSWORD", "p4ssw0rd-p4ssw0rd")
    monkeypatch.setenv("WORKER_REDIS_TLS_CA_FILE", "/etc/redis-ca/ca.crt")
    settings = Settings()
    assert "p4ssw0rd" not in repr(settings)
    assert security_options(settings) == {
        "username": "group-events-worker",
        "password": "p4ssw0rd-p4ssw0rd",
        "ssl_ca_certs": "/etc/redis-ca/ca.crt",
    }


@pytest.mark.parametrize(
    "variables",
    [
        {"WORKER_REDIS_TLS_CA_FILE": "/ca.crt"},  # TLS files with a redis:// URL: TLS would silently be off
        {"WORKER_REDIS_URL": "rediss://r:6380/0", "WORKER_REDIS_TLS_CERTFILE": "/c.pem"},  # a certificate, no key
    ],
)
def test_redis_tls_settings_that_would_not_take_effect_are_refused(monkeypatch, variables):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WORKER_REDIS_PASSWORD", "p4ssw0rd-p4ssw0rd")
    with pytest.raises(ValidationError) as error:
        Settings()
    assert "WORKER_REDIS_TLS" in describe_errors(error.value) and "p4ssw0rd" not in describe_errors(error.value)
