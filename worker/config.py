"""Settings: one pydantic-settings class, read from `WORKER_*` environment variables and validated at start.

Every `WORKER_KAFKA_<NAME>` variable is also passed to librdkafka as `<name>` with `_` turned into `.`
(`WORKER_KAFKA_SASL_MECHANISM=PLAIN` -> `sasl.mechanism=PLAIN`), so SASL/SSL need no code changes.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final, Literal, Self

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.processing.decode import Format

ENV_PREFIX = "WORKER_"
KAFKA_PREFIX = ENV_PREFIX + "KAFKA_"

Guarantee = Literal["exactly_once", "at_least_once"]
GroupProtocol = Literal["classic", "consumer"]
Role = Literal["consumer", "producer", "any"]

# Consumer settings the guarantees rest on: offsets are stored and committed by the worker only, with (or
# after) the output they caused, and only committed transactions are read. `WORKER_KAFKA_*` cannot change
# them: a different value is refused at start.
GUARANTEED_CONSUMER = {
    "enable.auto.commit": "false",
    "enable.auto.offset.store": "false",
    "isolation.level": "read_committed",
}
# Under the classic protocol: eager assignment, so a revocation takes every partition at once between batches.
CLASSIC_ASSIGNMENT = {"partition.assignment.strategy": "range"}
# Decided by the broker under the consumer protocol (KIP-848); librdkafka refuses them there.
BROKER_DECIDED = {
    "partition.assignment.strategy": "group.remote.assignor",
    "session.timeout.ms": "the broker's group.consumer.session.timeout.ms",
    "heartbeat.interval.ms": "the broker's group.consumer.heartbeat.interval.ms",
}


class ConfigError(ValueError):
    """A setting the worker refuses, with the variable to change."""


# Webhook secrets (`WORKER_INGEST_SECRETS`, `WORKER_INGEST_UMS_SECRETS`): Qlik takes 32 to 64 characters for a
# webhook's secret, and the UMS endpoint's own secrets follow the same rule. An entry `<tenant id>:<secret>` signs
# only for that tenant; a bare secret (or `*:<secret>`, for one that contains ':') signs for any tenant.
SECRET_LENGTHS: Final = range(32, 65)
ANY_TENANT: Final = "*"
_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Fields whose values never appear in an error message (describe_errors prints the others' values).
SECRET_FIELDS: Final = frozenset({"ingest_secrets", "ingest_ums_secrets", "redis_password"})
SecretEntry = tuple[str | None, str]  # (the tenant it signs for, None: any; the secret)


def secret_entry(text: str, where: str) -> SecretEntry:
    """One entry of a secrets setting or file. The ValueError's message names `where`, never the secret."""
    tenant, colon, secret = text.partition(":")
    if not colon:
        tenant, secret = ANY_TENANT, text
    if tenant != ANY_TENANT and not _TENANT_ID.fullmatch(tenant):
        raise ValueError(
            f"{where}: the part before ':' is not a tenant id (a secret containing ':' is written *:<secret>)"
        )
    if len(secret) not in SECRET_LENGTHS:
        raise ValueError(f"{where}: a secret of {len(secret)} characters, Qlik's have 32 to 64")
    return (None if tenant == ANY_TENANT else tenant), secret


def secrets_file_entries(text: str) -> list[SecretEntry]:
    """A secrets file: one entry per line (commas are part of the secret); blank lines and `#` comments skipped."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if (line := line.strip()) and not line.startswith("#"):
            entries.append(secret_entry(line, f"line {number}"))
    if not entries:
        raise ValueError("no secret in the file")
    return entries


# librdkafka properties (or prefixes) of one client role; the other role would log a CONFWARN for each.
CONSUMER_ONLY = (
    "group.",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.",
    "enable.auto.",
    "partition.assignment.strategy",
    "isolation.level",
    "fetch.",
    "queued.",
    "check.crcs",
    "enable.partition.eof",
)
PRODUCER_ONLY = (
    "transaction",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "linger.ms",
    "queue.buffering.",
    "batch.",
    "compression.",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "retries",
    "message.send.max.retries",
    "sticky.partitioning",
    "partitioner",
)


class Settings(BaseSettings):
    # hide_input_in_errors: a ValidationError printed as it is shows no value (secrets among them); describe_errors
    # shows the values of the fields that are not secret.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, hide_input_in_errors=True)

    kafka_bootstrap_servers: str = "localhost:9092"
    input_topics: Annotated[list[str], NoDecode] = ["qlik.group-events"]
    output_topic: str = "group-membership-changes"
    dlq_topic: str = "qlik.group-events.dlq"
    # The worker group's own commands (timeout flushes, continuations of large changes), keyed by change id:
    # the owner of a command's partition runs it in the transaction that commits the command's offset.
    control_topic: str = "group-events-worker.control"
    # When the control topic is missing, `run` creates it: 0 partitions means as many as the input topic with
    # the most; replication -1 means the broker's default.replication.factor.
    control_topic_partitions: int = Field(0, ge=0)
    control_topic_replication: int = Field(-1, ge=-1)
    group_id: str = "group-events-worker"
    redis_url: str = "redis://localhost:6379/0"
    redis_cluster: bool = False  # WORKER_REDIS_URL names one node of a Redis Cluster: use a cluster client
    # The Redis ACL user and its password (from a Secret: a password in WORKER_REDIS_URL would sit in a
    # ConfigMap). TLS with a rediss:// URL: the CA of the server's certificate (else the system's), and a client
    # certificate and key where Redis asks for one (tls-auth-clients).
    redis_username: str = ""
    redis_password: SecretStr = SecretStr("")
    redis_tls_ca_file: str = ""
    redis_tls_certfile: str = ""
    redis_tls_keyfile: str = ""
    # Replicas that must acknowledge a batch's Redis writes (WAIT) before its Kafka commit; 0: no wait.
    redis_min_replicas: int = Field(0, ge=0)
    # Start even when Redis has a maxmemory-policy that evicts keys (the worker refuses by default: an evicted
    # claim or change loses or repeats records). Only for a Redis that is known never to reach maxmemory.
    redis_allow_eviction: bool = False
    metrics_port: int = Field(9400, ge=0, le=65535)
    dedupe_ttl_seconds: int = Field(86_400, gt=0)
    batch_timeout_seconds: float = Field(900, gt=0)
    shutdown_timeout_seconds: float = Field(30, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    processing_guarantee: Guarantee = "exactly_once"
    # "consumer": the next-generation group protocol (KIP-848, Apache Kafka 4+): the broker assigns partitions
    # incrementally, so members keep theirs while the group changes.
    group_protocol: GroupProtocol = "classic"
    batch_size: int = Field(1000, ge=1, le=100_000)
    batch_max_wait_ms: int = Field(20, ge=1, le=10_000)
    timeout_scan_interval_seconds: float = Field(5, gt=0)
    # A change whose timeout command was sent gets another one after this, if it is still open by then.
    flush_lease_seconds: float = Field(60, gt=0)
    transactional_id: str = ""
    # Set by the supervisor (WORKER_PROCESSES > 1) for each child: its slot, which replaces the pid in the
    # default transactional id, so a child restarted in its slot fences its previous self.
    process_index: int | None = Field(None, ge=0)
    # Worker processes in this container (worker/consumer/supervisor.py); "auto": one per core of its CPU quota.
    processes: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 1
    # "topic=ums,other=cloudevents": input topics whose format is fixed; the others detect it per message.
    topic_formats: Annotated[dict[str, Format], NoDecode] = {}

    # ---- `python -m worker ingest`: the signed webhook endpoint (worker/ingest/server.py) ----
    ingest_port: int = Field(8080, ge=0, le=65535)
    ingest_topic: str = ""  # empty: the first of input_topics
    # Comma-separated `<tenant id>:<secret>` (or bare: any tenant); a request is accepted when its signature matches
    # one of them (rotation: old and new at once) and its body names that secret's tenant. Or, one per line, in
    # the file (a mounted Secret: read again when it changes). Not both.
    ingest_secrets: Annotated[list[SecretStr], NoDecode] = []
    ingest_secrets_file: str = ""
    # The UMS endpoint's secrets (`UMS-Signature`, a header of our own: README "Security"), in the same form.
    ingest_ums_secrets: Annotated[list[SecretStr], NoDecode] = []
    ingest_ums_secrets_file: str = ""
    # Only with no secret configured: accept requests without checking a signature (a trusted test setup).
    ingest_allow_unsigned: bool = False
    # 1,000,000: the Kafka clients' default message size, under the brokers' default topic limit (1,048,588)
    # with room for the key and headers; the ingest refuses to start with a limit the producer or topic cannot take.
    ingest_max_body_bytes: int = Field(1_000_000, gt=0)
    # Bounds against slow and unfinished requests (worker/ingest/http.py, bounds.py): headers, then the body,
    # must arrive within this; at most this many bodies are read at once (the oldest read is ended for one
    # more), requests wait for Kafka, and connections wait for a request (the oldest is closed for one more).
    ingest_read_timeout_seconds: float = Field(10, gt=0, le=300)
    ingest_max_body_reads: int = Field(64, ge=1)
    ingest_max_waiting: int = Field(1000, ge=1)
    ingest_max_idle_connections: int = Field(1000, ge=1)
    # Proxies whose X-Forwarded-For gives the client address of the logs (uvicorn's forwarded_allow_ips).
    ingest_forwarded_allow_ips: str = "127.0.0.1"
    ingest_delivery_timeout_ms: int = Field(5000, ge=100, le=300_000)
    # A plain deployment's own TLS; in Kubernetes the ingress terminates it. Both or neither.
    ingest_tls_certfile: str = ""
    ingest_tls_keyfile: str = Field("", validate_default=True)

    # ---- the Qlik Cloud APIs: backfill, watch, reconcile (worker/qlik, worker/upstream) ----
    # One tenant: its base URL and an API key, or an OAuth2 client (client credentials); several: a JSON file of
    # the same settings per tenant (worker/qlik/tenants.py). The secrets are SecretStr: never printed.
    qlik_url: str = ""
    qlik_api_key: SecretStr = SecretStr("")
    qlik_client_id: str = ""
    qlik_client_secret: SecretStr = SecretStr("")
    qlik_tenant_id: str = ""  # empty: asked from the tenant (GET /api/v1/users/me)
    qlik_tenants_file: str = ""
    # Requests per minute per tenant, kept below Qlik's documented 1,000 (tier 1) so a 429 is an exception.
    qlik_requests_per_minute: int = Field(600, ge=1, le=1000)
    # ---- `python -m worker watch` (worker/upstream/watch.py) ----
    watch_interval_seconds: float = Field(60, gt=0)
    watch_reenable: bool = False  # PATCH a webhook Qlik disabled back to enabled
    # Trouble (a disabled webhook, failing deliveries) longer than this is backfilled, not only resent.
    watch_outage_threshold_seconds: float = Field(300, ge=0)
    # Added around every gap: clock skew between Qlik, the ingest and this host, and deliveries in flight.
    watch_gap_margin_seconds: float = Field(120, ge=0)
    watch_reconcile_interval_seconds: float = Field(3600, ge=0)  # 0: the watch never reconciles

    @field_validator("input_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: object) -> object:
        if isinstance(value, str):
            value = [t.strip() for t in value.split(",") if t.strip()]
        if isinstance(value, list) and not value:
            raise ValueError("at least one input topic is required")
        return value

    @field_validator("topic_formats", mode="before")
    @classmethod
    def _split_formats(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str):
            pairs = [pair.strip() for pair in value.split(",") if pair.strip()]
            if bad := [pair for pair in pairs if pair.count("=") != 1 or not pair.split("=")[0].strip()]:
                raise ValueError(f"expected topic=format pairs separated by commas, got {bad[0]!r}")
            value = {t.strip(): f.strip().lower() for t, f in (pair.split("=") for pair in pairs)}
        if isinstance(value, dict) and (unknown := set(value) - set(info.data.get("input_topics") or ())):
            raise ValueError(f"not an input topic (WORKER_INPUT_TOPICS): {', '.join(sorted(unknown))}")
        return value

    @field_validator("ingest_secrets", "ingest_ums_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value

    @field_validator("ingest_secrets", "ingest_ums_secrets")
    @classmethod
    def _check_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        for number, entry in enumerate(value, 1):
            secret_entry(entry.get_secret_value(), f"entry {number}")
        return value

    @field_validator("ingest_secrets_file", "ingest_ums_secrets_file")
    @classmethod
    def _check_secrets_file(cls, value: str) -> str:
        if value:
            secrets_file_entries(_read_secrets(value))
        return value

    @model_validator(mode="after")
    def _one_source_of_secrets(self) -> Self:
        for name in ("ingest_secrets", "ingest_ums_secrets"):
            if getattr(self, name) and getattr(self, name + "_file"):
                variable = ENV_PREFIX + name.upper()
                raise ValueError(f"set {variable} or {variable}_FILE, not both")
        return self

    @field_validator("ingest_tls_keyfile")
    @classmethod
    def _tls_pair(cls, value: str, info: ValidationInfo) -> str:
        if bool(value) != bool(info.data.get("ingest_tls_certfile")):
            raise ValueError("set WORKER_INGEST_TLS_CERTFILE and WORKER_INGEST_TLS_KEYFILE together, or neither")
        return value

    @model_validator(mode="after")
    def _redis_tls(self) -> Self:
        if (self.redis_tls_ca_file or self.redis_tls_certfile) and not self.redis_url.startswith("rediss://"):
            raise ValueError("WORKER_REDIS_TLS_* need a rediss:// WORKER_REDIS_URL")
        if bool(self.redis_tls_certfile) != bool(self.redis_tls_keyfile):
            raise ValueError("set WORKER_REDIS_TLS_CERTFILE and WORKER_REDIS_TLS_KEYFILE together, or neither")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def ingest_signed(self) -> bool:
        """Whether any webhook secret is configured (then no endpoint accepts unsigned requests)."""
        return any(
            (self.ingest_secrets, self.ingest_secrets_file, self.ingest_ums_secrets, self.ingest_ums_secrets_file)
        )

    def ingest_secret_entries(self) -> list[SecretEntry]:
        """The Qlik endpoint's secrets, from the setting or its file (read now)."""
        return _entries(self.ingest_secrets, self.ingest_secrets_file)

    def ingest_ums_secret_entries(self) -> list[SecretEntry]:
        """The UMS endpoint's secrets, from the setting or its file (read now)."""
        return _entries(self.ingest_ums_secrets, self.ingest_ums_secrets_file)

    @property
    def subscribed_topics(self) -> list[str]:
        """What the consumer group reads: the input topics and the control topic."""
        return [*self.input_topics, self.control_topic]

    @property
    def effective_ingest_topic(self) -> str:
        return self.ingest_topic or self.input_topics[0]

    def kafka_overrides(self, role: Role = "any", environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """librdkafka settings from `WORKER_KAFKA_*` (bootstrap servers included), without the ones the other
        client role would only warn about."""
        extra = {name: value for name, (_variable, value) in _kafka_variables(role, environ).items()}
        extra["bootstrap.servers"] = self.kafka_bootstrap_servers
        return extra

    def consumer_config(self, environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
        """The consumer's librdkafka settings from `WORKER_KAFKA_*` and the group protocol, with the guaranteed
        ones fixed; and a warning per override dropped. Raises `ConfigError` for an override of a guaranteed
        setting."""
        variables = _kafka_variables("consumer", environ)
        fixed = {**GUARANTEED_CONSUMER, "group.protocol": self.group_protocol}
        if self.group_protocol == "classic":
            fixed |= CLASSIC_ASSIGNMENT
        for name, wanted in fixed.items():
            if name in variables and variables[name][1].strip().lower() != wanted:
                variable, value = variables[name]
                why = "set WORKER_GROUP_PROTOCOL instead" if name == "group.protocol" else f"the worker needs {wanted}"
                raise ConfigError(f"{variable}={value}: refused, {why}")
        warnings = []
        if self.group_protocol == "consumer":
            for name, replacement in BROKER_DECIDED.items():
                if name in variables:
                    variable = variables.pop(name)[0]
                    warnings.append(f"{variable} ignored: with WORKER_GROUP_PROTOCOL=consumer it is {replacement}")
        config = {name: value for name, (_variable, value) in variables.items()}
        config["bootstrap.servers"] = self.kafka_bootstrap_servers
        return config | fixed, warnings

    def effective_transactional_id(self) -> str:
        """Stable across restarts of one pod (hostname) and unique per process on one host (pid, or the
        supervisor's slot), except for host-network pods (one hostname, pid 1 each): see
        `worker.consumer.sinks.TransactionalId`."""
        process = os.getpid() if self.process_index is None else self.process_index
        return self.transactional_id or f"{self.group_id}-{socket.gethostname()}-{process}"


def _kafka_variables(role: Role, environ: Mapping[str, str] | None) -> dict[str, tuple[str, str]]:
    """librdkafka name -> (variable, value) of the `WORKER_KAFKA_*` variables meant for `role`."""
    env = os.environ if environ is None else environ
    skip = {"consumer": PRODUCER_ONLY, "producer": CONSUMER_ONLY, "any": ()}[role]
    return {
        name: (key, value)
        for key, value in env.items()
        if key.startswith(KAFKA_PREFIX)
        and not (name := key[len(KAFKA_PREFIX) :].lower().replace("_", ".")).startswith(skip)
    }


def _entries(values: list[SecretStr], path: str) -> list[SecretEntry]:
    if path:
        return secrets_file_entries(_read_secrets(path))
    return [secret_entry(value.get_secret_value(), "") for value in values]


def _read_secrets(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None


def describe_errors(error: ValidationError) -> str:
    """One readable line per bad setting, named as the operator spelled it; never the value of a secret."""
    lines = []
    for item in error.errors():
        field = "_".join(str(p) for p in item["loc"][:1])
        name = ENV_PREFIX + field.upper() if field else "settings"
        shown = "" if field in SECRET_FIELDS or not field else f" (got {item.get('input')!r})"
        lines.append(f"{name}: {item['msg']}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings() -> Settings:
    """The settings from the environment; a bad value exits 2 with a message naming the variable."""
    try:
        return Settings()
    except ValidationError as error:
        print(describe_errors(error), file=sys.stderr)
        raise SystemExit(2) from None
