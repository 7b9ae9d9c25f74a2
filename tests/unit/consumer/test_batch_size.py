"""The loop's batch sizes: a small first batch, doubling while records per message are few, and few messages
after a batch that made many records, so a batch's records stay bounded whatever the fan-out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.consumer.loop import FIRST_BATCH, OUTPUT_BUDGET, next_batch_size


def test_starts_small_and_doubles_up_to_the_limit_on_flat_input() -> None:
    sizes = [next_batch_size(1000)]
    while len(sizes) < 8:
        sizes.append(next_batch_size(1000, sizes[-1], sizes[-1], sizes[-1]))  # one record per message
    assert sizes == [FIRST_BATCH, 100, 200, 400, 800, 1000, 1000, 1000]
    assert next_batch_size(10) == 10  # a limit below the first batch wins


def test_after_a_fan_out_batch_polls_what_fits_the_budget() -> None:
    assert next_batch_size(1000, 50, 50, 50 * 80) == OUTPUT_BUDGET // 80
    assert next_batch_size(1000, 50, 50, 10**9) == 1  # never zero: one message always moves


@given(
    limit=st.integers(1, 100_000),
    size=st.integers(1, 100_000),
    messages=st.integers(1, 100_000),
    outputs=st.integers(0, 10**7),
)
def test_bounded_by_limit_doubling_and_budget(limit: int, size: int, messages: int, outputs: int) -> None:
    following = next_batch_size(limit, size, messages, outputs)
    assert 1 <= following <= min(limit, size * 2)
    if following > 1:  # at the last batch's rate, the next batch stays within the budget
        assert following * outputs <= messages * OUTPUT_BUDGET
