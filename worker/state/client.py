"""The Redis client: connection (one node or a Redis Cluster), pipelined commands, Lua scripts run in batches,
the replica wait, each primary's memory, and `StateMissing` (a script's state is gone).

`pipelined` sends a batch of commands in one round trip. To one server it packs them all with hiredis in one
call and reads the raw replies (no response callbacks: callers take raw replies): redis-py's pipeline costs
several µs of Python per command (argument checks, per-command packing, callbacks), a third of the worker's
Redis time on a flat batch. The replies are taken from the connection's hiredis reader in one loop, not by
redis-py's `read_response` per reply (its time-out, push-message and error handling per reply: 3.56 -> 1.74 µs
per pipelined command, issue 22). To a cluster it is redis-py's cluster pipeline, which routes each command by slot.

redis-py's own `Script` objects re-check the script cache with an extra round trip on every pipeline
execution; here a batch is sent with EVALSHA and only a NOSCRIPT reply (new or restarted Redis, a new cluster
node) loads the script and re-sends the calls that failed. Every script keeps the tag rule (a call applied
again changes nothing and returns the same; `docs/guarantees.md`, rule 2), so that is safe. On a cluster,
redis-py's cluster pipeline groups the commands by slot and sends one pipeline per node; every script call
names keys of one hash tag only, so each call runs on one node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import hiredis
import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _HiredisParser
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from worker.config import Settings

STATE_MISSING = "STATE_MISSING"  # the prefix of a script's error reply for missing state (see `StateMissing`)
Arg = str | int | float | bytes
Call = tuple[Sequence[str], Sequence[Arg]]  # (keys, args)
Command = tuple[Arg, ...]
Client = redis.Redis | RedisCluster


class StateMissing(redis.RedisError):
    """Redis state that a script needs is gone or not what the scripts write (a key deleted, or evicted by a
    `maxmemory-policy` other than noeviction): a Redis failure, so the batch is retried, `/readyz` answers
    503 and the error names the key. It does not heal by itself: see the README's troubleshooting."""


class ReplicasBehind(redis.RedisError):
    """Fewer replicas than `WORKER_REDIS_MIN_REPLICAS` acknowledged the writes in time: a Redis failure, so the
    batch is retried (its writes are tagged, so redoing them is safe)."""


def connect(url: str, timeout: float = 5, *, cluster: bool = False, **security: str) -> Client:
    """A client for the URL: a cluster client (node discovery, routing by slot) when `cluster`. `security`:
    redis-py's `username`, `password` and `ssl_*` options (`security_options`)."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 10,
        "decode_responses": False,
        **security,
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def security_options(settings: Settings) -> dict[str, str]:
    """The ACL user, password and TLS files of the settings, as redis-py options (those that are set): they
    take precedence over the URL's. A rediss:// URL turns TLS on, with the server's certificate and name checked."""
    options = {
        "username": settings.redis_username,
        "password": settings.redis_password.get_secret_value(),
        "ssl_ca_certs": settings.redis_tls_ca_file,
        "ssl_certfile": settings.redis_tls_certfile,
        "ssl_keyfile": settings.redis_tls_keyfile,
    }
    return {name: value for name, value in options.items() if value}


def redis_client(settings: Settings, timeout: float = 5) -> Client:
    """A client for `WORKER_REDIS_URL` (and `WORKER_REDIS_CLUSTER`, the user, password and TLS settings)."""
    return connect(settings.redis_url, timeout, cluster=settings.redis_cluster, **security_options(settings))


def primaries(client: Client) -> list[Any]:
    """Where writes land: every primary of a cluster, else [None] (the one server)."""
    if isinstance(client, RedisCluster):
        return list(client.get_primaries())  # type: ignore[no-untyped-call]
    return [None]


def on_node(client: Client, node: Any, *args: Arg) -> Any:
    """A command on one node (`primaries`): the server itself, or that cluster node."""
    if node is None:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]
    return client.execute_command(*args, target_nodes=node)  # type: ignore[no-untyped-call]


def server_version(client: Client) -> int:
    """The major version of the oldest server (cluster node) behind the client; 0 when INFO is denied (some
    managed services), so callers take the form every version knows."""
    try:
        info: dict[str, Any] = client.info("server")
    except redis.ResponseError:
        return 0
    nodes = [info] if "redis_version" in info else [v for v in info.values() if isinstance(v, dict)]
    return min((int(str(node.get("redis_version", "0")).split(".")[0]) for node in nodes), default=0)


# The one maxmemory-policy under which Redis never drops the worker's state: at maxmemory it refuses writes
# instead (an OOM error reply, retried by the worker like an outage). Every other policy evicts keys: dedupe
# claims (copies emitted again) or parts of open changes (users lost, or `StateMissing` for good).
NO_EVICTION = "noeviction"


@dataclass(frozen=True)
class Memory:
    """One primary's memory (INFO memory): `maxmemory` 0 means no limit."""

    node: str
    used: int
    maxmemory: int
    policy: str


def memory(client: Client) -> list[Memory]:
    """Memory of every primary behind the client (one for a single server). Raises `redis.RedisError`
    (`ResponseError` where INFO is denied)."""
    out = []
    for node in primaries(client):
        info = on_node(client, node, "INFO", "memory")
        name = "redis" if node is None else str(node.name)
        used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        out.append(Memory(name, used, limit, str(info.get("maxmemory_policy", ""))))
    return out


def pipelined(client: Client, commands: Sequence[Command]) -> list[Any]:
    """The raw replies of `commands`, sent in one round trip (per node on a cluster); an error reply is its
    `ResponseError` in the list, a connection failure raises (redis-py's retry policy of the connection first,
    which sends the whole batch again: every command we pipeline is safe to repeat)."""
    if not commands:
        return []
    if isinstance(client, RedisCluster):
        pipe: Any = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))
    # hiredis's stub types the argument as a 1-tuple; it takes any tuple of str, bytes, int and float
    packed = b"".join([hiredis.pack_command(command) for command in commands])  # type: ignore[arg-type]
    pool = client.connection_pool
    connection: Any = pool.get_connection()  # redis-py's connection methods are untyped

    def exchange() -> list[Any]:
        connection.send_packed_command([packed])  # a list of buffers
        return _replies(connection, len(commands))

    try:
        return list(connection.retry.call_with_retry(exchange, lambda _error: connection.disconnect()))
    except BaseException:
        connection.disconnect()  # replies may be left unread: never hand this socket to the next caller
        raise
    finally:
        pool.release(connection)


def _replies(connection: Any, count: int) -> list[Any]:
    """The next `count` raw replies of `connection`, an error reply as its `ResponseError`. Straight from its
    hiredis reader, filled from the socket as needed; a connection without one (redis-py without hiredis) reads
    reply by reply. RESP3 push messages among the replies (key-tracking invalidations, a managed Redis's
    maintenance notices) go to redis-py's push handling, as in its `read_response`. A socket that fails or times
    out raises redis-py's `ConnectionError` / `TimeoutError` (the caller disconnects it: replies may be left
    unread)."""
    parser = connection._parser
    if not isinstance(parser, _HiredisParser):
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(connection.read_response())
            except ResponseError as error:
                replies.append(error)
        return replies
    reader: Any = parser._reader
    fill: Any = parser.read_from_socket  # untyped in redis-py
    push: Any = parser._hiredis_PushNotificationType  # None: a hiredis that reads no RESP3 push frames
    handle_push: Any = parser.handle_push_response  # untyped in redis-py
    if reader is None:  # disconnected meanwhile (redis-py clears it)
        raise redis.ConnectionError("Redis connection closed before its replies were read")
    replies = []
    while len(replies) < count:
        reply = reader.gets()
        if reply is NOT_ENOUGH_DATA:
            try:
                fill()
            except OSError as error:  # redis-py's Connection turns these into its ConnectionError too
                raise redis.ConnectionError(f"Error while reading from Redis: {error}") from error
            continue
        if isinstance(reply, redis.ConnectionError):
            raise reply
        if push is not None and isinstance(reply, push):
            # a RESP3 push message (redis-py 8 speaks RESP3): not a reply; redis-py's handling, as read_response
            handle_push(reply)
            continue
        replies.append(reply)
    return replies


class ReplicaWait:
    """`WAIT n timeout` on every primary: returns once `n` replicas hold every write this client made, else raises
    `ReplicasBehind`. WAIT counts the writes of its own connection; the processor's client is used from one
    thread, so each node's pool holds one connection, the one that wrote."""

    def __init__(self, client: Client, replicas: int, timeout_ms: int) -> None:
        self._client, self._replicas, self._timeout_ms = client, replicas, timeout_ms

    def wait(self) -> None:
        for node in primaries(self._client):
            acknowledged = int(on_node(self._client, node, "WAIT", self._replicas, self._timeout_ms))
            if acknowledged < self._replicas:
                where = "" if node is None else f" on {node.name}"
                raise ReplicasBehind(
                    f"{acknowledged} of {self._replicas} replica(s) acknowledged the writes{where} "
                    f"within {self._timeout_ms} ms (WORKER_REDIS_MIN_REPLICAS)"
                )


def indexes_by(keys: Sequence[Hashable]) -> dict[Any, list[int]]:
    """The positions of each key, keys in first-seen order: a batch's items grouped for one script call per
    hash tag (a tenant, a group), each group's items in batch order."""
    groups: dict[Any, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return groups


def in_batch_order(groups: dict[Any, list[int]], replies: Sequence[Sequence[Any]], size: int) -> list[Any]:
    """Each call's replies (one per item of its group, in order) back at the items' positions in the batch."""
    out: list[Any] = [None] * size
    for indexes, reply in zip(groups.values(), replies, strict=True):
        for index, value in zip(indexes, reply, strict=True):
            out[index] = value
    return out


class LuaScript:
    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self._source = (files("worker.state") / "lua" / f"{name}.lua").read_bytes()
        self._sha = hashlib.sha1(self._source).hexdigest()

    def run(self, calls: Sequence[Call], also: Sequence[Command] = ()) -> list[Any]:
        """Run the script once per call, pipelined after the plain commands `also` (sent in the same round
        trip, replies dropped); script results in call order. Raises RedisError on failure."""
        if not calls:
            return []
        results = self._send(calls, also)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            self._client.script_load(self._source)  # on a cluster: on every primary
            for i, result in zip(missing, self._send([calls[i] for i in missing]), strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, ResponseError) and str(result).startswith(STATE_MISSING):
                raise StateMissing(str(result)) from result
            if isinstance(result, Exception):
                raise result
        return results

    def _send(self, calls: Sequence[Call], also: Sequence[Command] = ()) -> list[Any]:
        # EVALSHA as a plain command, not pipe.evalsha: redis-py's cluster pipeline blocks that method, but
        # routes the command by its keys
        commands = [*also, *(("EVALSHA", self._sha, len(keys), *keys, *args) for keys, args in calls)]
        replies = pipelined(self._client, commands)
        for reply in replies[: len(also)]:
            if isinstance(reply, Exception):
                raise reply
        return replies[len(also) :]
