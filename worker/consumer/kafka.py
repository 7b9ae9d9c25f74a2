"""The Kafka clients as the loop and the sinks use them: the parts of `confluent_kafka.Consumer` and
`confluent_kafka.Producer` they call, typed, so that `mypy --strict` checks the unit tests' fakes
(`tests/support/kafka_fakes.py`) against the same interface the real clients are used through.

Each method says what it does to positions and committed offsets: the loop's guarantees rest on that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from confluent_kafka import TopicPartition

from worker.processing.processor import Message

Rebalance = Callable[[Any, list[TopicPartition]], None]  # (the consumer, the partitions) -> None


class KafkaMessage(Message, Protocol):
    """A consumed message (what the processing reads of it), or an error event (`error()` not None: no usable
    topic, partition or offset)."""

    def error(self) -> Any: ...


class KafkaConsumer(Protocol):
    """A group member with manual offset commits (`enable.auto.commit` and `enable.auto.offset.store` false)."""

    def subscribe(self, topics: list[str], *, on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance) -> None:
        """Join the group. The callbacks run inside `consume`, on the calling thread; the assignment changes after
        they return (incrementally under KIP-848)."""
        ...

    def consume(self, num_messages: int = 1, timeout: float = -1) -> Sequence[Any]:
        """Up to `num_messages` from the fetched positions of the unpaused partitions, waiting up to `timeout`
        seconds; may hold error events. Advances the fetch position, never the committed offset. Serves
        rebalances, so it must be called within `max.poll.interval.ms`."""
        ...

    def pause(self, partitions: list[TopicPartition]) -> None:
        """Stop fetching these; their fetch positions stay. Messages fetched before may still be returned."""
        ...

    def resume(self, partitions: list[TopicPartition]) -> None: ...

    def seek(self, partition: TopicPartition) -> None:
        """Set the fetch position of an assigned partition (raises `KafkaException` for another one)."""
        ...

    def assignment(self) -> list[TopicPartition]: ...

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        """The group's committed offsets (-1001 where none). Under `read_committed` the broker waits for pending
        transactional offsets of these partitions first (KIP-447), so this may time out (`KafkaException`)."""
        ...

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]: ...

    def consumer_group_metadata(self) -> Any:
        """This member's generation (classic) or member epoch (KIP-848): offsets sent with a transaction are
        refused by the coordinator when it is stale, which fences a member that lost its partitions."""
        ...

    def commit(self, *, offsets: list[TopicPartition], asynchronous: Literal[False]) -> list[TopicPartition]:
        """Commit these offsets for the group (at-least-once only); raises `KafkaException`."""
        ...

    def close(self) -> None:
        """Leave the group: the partitions move to other members at once."""
        ...


class KafkaProducer(Protocol):
    """An idempotent or transactional producer. Every call may raise `KafkaException`; its `KafkaError` says
    whether it is retriable, requires an abort, or is fatal (a new producer is needed)."""

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, *, headers: Any = None) -> None:
        """Queue one message (raises `BufferError` when the local queue is full)."""
        ...

    def poll(self, timeout: float = -1) -> int:
        """Serve delivery reports."""
        ...

    def flush(self, timeout: float = -1) -> int:
        """Wait for every queued message's delivery report; the number still pending at the timeout."""
        ...

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None: ...

    def init_transactions(self, timeout: float = -1) -> None:
        """Fence older producers with this `transactional.id` and finish (commit or abort) their open
        transaction."""
        ...

    def begin_transaction(self) -> None: ...

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], metadata: Any, timeout: float = -1) -> None:
        """Add input offsets to the open transaction; committed only with it."""
        ...

    def commit_transaction(self, timeout: float = -1) -> None:
        """Flush, then commit. After a retriable error (a timeout) the commit may still complete: call it again."""
        ...

    def abort_transaction(self, timeout: float = -1) -> None: ...

    def close(self) -> bool:
        """Abort an open transaction, flush what is queued (waiting without limit: purge or drain first), then
        destroy the client and its threads."""
        ...

    def __len__(self) -> int:
        """Messages not delivered yet plus events not served yet (delivery reports, errors)."""
        ...


NewProducer = Callable[[dict[str, Any]], KafkaProducer]
