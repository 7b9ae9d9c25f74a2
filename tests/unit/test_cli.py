"""The command table: every command's --help names its options; a missing subcommand is a usage error."""

from __future__ import annotations

import pytest

from tests.support.cli import run


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        ([], ["run", "demo", "sample-events", "check", "validate", "dlq"]),
        (["run"], ["--embedded"]),
        (["demo"], ["embedded stack"]),
        (["sample-events"], ["first input topic"]),
        (["check"], ["--timeout"]),
        (["validate"], ["FILE", "stdin"]),
        (["dlq"], ["inspect", "redrive"]),
        (["dlq", "inspect"], ["--limit", "--reason", "--partition", "--from-offset", "--to-offset", "--quiet"]),
        (
            ["dlq", "redrive"],
            ["--reason", "--from-offset", "--to-offset", "--partition", "--dry-run", "--to-topic", "--progress"],
        ),
    ],
)
def test_help_of_every_command_exits_0_and_names_its_options(
    argv: list[str], mentions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run([*argv, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: python -m worker {' '.join(argv)}".rstrip())
    for word in mentions:
        assert word in out


def test_a_missing_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["dlq"], capsys)
    assert code == 2
    assert "required: COMMAND" in err
