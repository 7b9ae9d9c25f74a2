"""worker.local.ingest_client: the webhook form of the demo samples and the curl line `make run` prints."""

from __future__ import annotations

import shlex
from importlib.resources import as_file, files

import orjson

from worker.ingest.secrets import sign
from worker.local.ingest_client import curl_command, webhook_form
from worker.local.samples import Sample, expected_counts, samples
from worker.processing.decode import decode
from worker.processing.models import Event


def test_structured_samples_are_posted_as_they_are():
    for sample in samples()[:5]:
        body, content_type = webhook_form(sample)
        assert body == sample.value
        assert content_type == dict(sample.headers)["content-type"].decode()


def test_a_binary_mode_part_becomes_the_same_event_in_structured_mode():
    binary = [s for s in samples() if any(name.startswith("ce_") for name, _ in s.headers)]
    assert binary
    for sample in binary:
        body, content_type = webhook_form(sample)
        assert content_type == "application/cloudevents+json"
        original = decode(sample.value, sample.headers)
        folded = decode(body, [("content-type", content_type)])
        assert isinstance(original, Event) and isinstance(folded, Event)
        assert folded == original


def _json_object(body: bytes) -> bool:
    try:
        return isinstance(orjson.loads(body), dict)
    except orjson.JSONDecodeError:
        return False


def test_the_demo_through_the_ingest_gives_its_records_and_no_dlq_entry():
    """What the ingest accepts (JSON objects) gives the demo's records; the poison message, not JSON, is
    refused with 400 and never reaches the worker, so nothing is dead-lettered."""
    forms = [(sample, *webhook_form(sample)) for sample in samples()]
    accepted = [
        Sample(s.partition, body, [("content-type", ct)], s.note) for s, body, ct in forms if _json_object(body)
    ]
    assert len(accepted) == len(forms) - 1
    assert expected_counts(accepted) == (expected_counts()[0], 0)


def test_curl_line_posts_the_file_byte_for_byte_with_its_signature():
    with as_file(files("worker.local") / "examples" / "group-created.json") as path:
        line = curl_command("http://127.0.0.1:8080/webhooks/qlik", path, "s" * 32, "application/cloudevents+json")
        words = shlex.split(line)
        assert words[words.index("--data-binary") + 1] == f"@{path}"
        assert f"Qlik-Signature: {sign(path.read_bytes(), 's' * 32)}" in words
    assert "Content-Type: application/cloudevents+json" in words
