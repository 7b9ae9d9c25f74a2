"""worker.local.samples and the packaged examples: the demo input is the seed verbatim plus a known mix."""

from __future__ import annotations

from collections import Counter
from importlib.resources import files

import pytest

from worker.local.samples import SEED_EXAMPLES, samples, seed_example
from worker.processing.decode import Rejected, decode
from worker.processing.models import GROUP_CREATED, GROUP_DELETED, GROUP_UPDATED, USERS_MODIFIED, Event, UsersModified

EXAMPLES = files("worker.local") / "examples"


def test_every_seed_example_is_packaged_and_used_by_the_samples(seed_dir):
    seeds = sorted(path.stem for path in seed_dir.glob("*.json"))
    assert sorted(SEED_EXAMPLES) == seeds
    assert all((EXAMPLES / f"{name}.json").is_file() for name in seeds)


@pytest.mark.parametrize("name", SEED_EXAMPLES)
def test_packaged_example_is_byte_identical_to_the_seed(name, seed_dir):
    assert (EXAMPLES / f"{name}.json").read_bytes() == (seed_dir / f"{name}.json").read_bytes()
    assert seed_example(name) == (seed_dir / f"{name}.json").read_bytes()


@pytest.fixture(scope="module")
def decoded_samples():
    return [(sample, decode(sample.value, sample.headers)) for sample in samples()]


def test_samples_start_with_the_four_seed_events_verbatim(decoded_samples, seed_bytes):
    seeds = decoded_samples[:4]
    assert [sample.value for sample, _ in seeds] == [seed_bytes[name] for name in SEED_EXAMPLES]
    assert [result.envelope.type for _, result in seeds if isinstance(result, Event)] == [
        GROUP_CREATED,
        GROUP_UPDATED,
        GROUP_DELETED,
        USERS_MODIFIED,
    ]


def test_samples_hold_a_three_part_change_in_binary_mode_with_one_final_part(decoded_samples):
    parts = [(s, r) for s, r in decoded_samples if "change part" in s.note]
    assert len(parts) == 3
    assert all(any(name == "ce_specversion" for name, _ in sample.headers) for sample, _ in parts)
    events = [result for _, result in parts]
    assert all(isinstance(e, Event) and isinstance(e.data, UsersModified) for e in events)
    assert sum(e.data.fully_processed for e in events) == 1
    assert len({e.envelope.id for e in events}) == 3
    # one change: same group, same lastUpdatedAt, same deleted flag
    assert len({(e.data.id, e.data.last_updated_at, e.data.deleted) for e in events}) == 1
    users = [user for e in events for user in e.data.affected_users]
    assert len(users) == len(set(users)) == 6
    final_position = next(i for i, e in enumerate(events) if e.data.fully_processed)
    assert 0 < final_position < 2, "the final part neither first nor last: one part arrives after it"


def test_samples_hold_one_duplicate_on_another_partition(decoded_samples):
    parts = [(s, r) for s, r in decoded_samples if "change part" in s.note]
    duplicates = [(s, r) for s, r in decoded_samples if "duplicate" in s.note]
    assert len(duplicates) == 1
    sample, result = duplicates[0]
    assert isinstance(result, Event)
    original = next(s for s, r in parts if r == result)
    assert (sample.value, sample.headers) == (original.value, original.headers)
    assert sample.partition != original.partition
    assert [r for _, r in parts].count(result) == 1


def test_samples_end_with_one_poison_message_rejected_as_not_json(decoded_samples):
    rejected = [(s, r) for s, r in decoded_samples if isinstance(r, Rejected)]
    assert len(rejected) == 1
    assert rejected[0][1].reason == "not_json"
    assert decoded_samples[-1] == rejected[0]


def test_sample_mix(decoded_samples):
    assert len(decoded_samples) == 10
    kinds = Counter(type(r).__name__ for _, r in decoded_samples)
    assert kinds == {"Event": 9, "Rejected": 1}
    assert {s.partition for s, _ in decoded_samples} == {0, 1}
