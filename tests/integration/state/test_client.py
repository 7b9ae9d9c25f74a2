"""`pipelined` on a real Redis: replies in order with error replies in place, replies larger than one socket read,
and a connection that dies or times out is replaced without a stale reply reaching the next batch."""

import pytest
import redis
from redis._parsers import _RESP2Parser

from worker.state.client import connect, pipelined


@pytest.fixture(params=["hiredis", "python"])
def any_parser(request: pytest.FixtureRequest, client: redis.Redis, redis_service: object) -> redis.Redis:
    """The session's Redis through hiredis (the replies read in one loop) or through redis-py's pure-Python
    parser (reply by reply: redis-py without a hiredis it takes, say hiredis < 3.2)."""
    if request.param == "hiredis":
        return client
    return redis.Redis.from_url(str(getattr(redis_service, "address", redis_service)), parser_class=_RESP2Parser)


def test_replies_come_back_in_order_with_an_error_reply_in_its_place(any_parser: redis.Redis) -> None:
    replies = pipelined(any_parser, [("SET", "k", 1), ("INCR", "k"), ("HGET", "k", "f"), ("GET", "k"), ("GET", "none")])
    assert replies[:2] == [b"OK", 2]
    assert isinstance(replies[2], redis.ResponseError) and "WRONGTYPE" in str(replies[2])
    assert replies[3:] == [b"2", None]


def test_replies_larger_than_a_socket_read_are_whole(any_parser: redis.Redis) -> None:
    big = b"x" * 300_000  # redis-py reads 64 KiB at a time
    commands = [("SET", f"big:{i}", big + bytes([48 + i])) for i in range(3)]
    commands += [("GET", f"big:{i}") for i in range(3)]
    assert pipelined(any_parser, commands) == [b"OK"] * 3 + [big + bytes([48 + i]) for i in range(3)]


def test_a_connection_killed_between_batches_is_replaced(client: redis.Redis, redis_service: object) -> None:
    (connection_id,) = pipelined(client, [("CLIENT", "ID")])
    other = connect(str(getattr(redis_service, "address", redis_service)))
    assert other.client_kill_filter(_id=connection_id) == 1
    assert pipelined(client, [("SET", "after", "kill"), ("GET", "after")]) == [b"OK", b"kill"]
    (new_id,) = pipelined(client, [("CLIENT", "ID")])
    assert new_id != connection_id


def test_a_timed_out_batch_leaves_no_reply_for_the_next(redis_service: object) -> None:
    slow = connect(str(getattr(redis_service, "address", redis_service)), timeout=0.2)
    slow.delete("empty")
    with pytest.raises(redis.TimeoutError):
        pipelined(slow, [("BLPOP", "empty", 1)])  # blocks past the socket timeout (each retry too)
    # on a kept connection, the BLPOP's nil (due within the second) would be read as the PING's reply
    assert pipelined(slow, [("PING",), ("ECHO", "next")]) == [b"PONG", b"next"]


def test_a_push_message_between_replies_is_not_taken_for_a_reply(any_parser: redis.Redis) -> None:
    """redis-py 8 speaks RESP3, where the server may send push messages (key-tracking invalidations, a managed
    Redis's maintenance notices) in between replies. Taken for a reply, it would shift every reply of the batch by
    one (a claim judged by another key's answer) and leave the last one to the next batch. Here the connection
    tracks a key and changes it itself, so the invalidation comes among the batch's replies."""
    commands = [("CLIENT", "TRACKING", "ON"), ("GET", "tracked"), ("SET", "tracked", "changed"), ("PING",)]
    assert pipelined(any_parser, commands) == [b"OK", None, b"OK", b"PONG"]
    assert pipelined(any_parser, [("GET", "tracked")]) == [b"changed"]
