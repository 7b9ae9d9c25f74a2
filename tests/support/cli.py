"""Running `python -m worker` in-process, as the tests of the command line do."""

from __future__ import annotations

import pytest

from worker.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one command; a usage error's SystemExit is its exit code."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
