"""Summaries of py-spy's raw (collapsed-stack) output: `thread (tid): name;frame;...;frame count` per line,
a frame being `function (file:line)`."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENTRY_POINTS = {"<module>", "main", "cmd_run"}  # on every stack of the worker: left out of inclusive tables
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


@dataclass(frozen=True)
class Stack:
    thread: str
    frames: tuple[str, ...]  # outermost first
    samples: int


def stacks(path: Path, thread: str | None = None) -> Iterator[Stack]:
    """The collapsed stacks py-spy wrote, of one thread or (None) of all."""
    for raw in path.read_text(errors="replace").splitlines():
        head, _, count = raw.rpartition(" ")
        if not head or not count.isdigit():
            continue
        parts = head.split(";")
        name = parts[0].split(": ", 1)[1] if ": " in parts[0] else parts[0]
        if thread is None or name == thread:
            yield Stack(name, tuple(parts[1:]), int(count))


def function_of(frame: str) -> str:
    """`function (file)` without the line."""
    match = FRAME.match(frame)
    return f"{match['function']} ({match['file']})" if match else frame


@dataclass
class Table:
    title: str
    total: int
    rows: list[tuple[str, int]]

    def markdown(self) -> str:
        lines = [f"**{self.title}** ({self.total} samples)", "", "| share | samples | where |", "| ---: | ---: | --- |"]
        for name, samples in self.rows:
            share = 100 * samples / self.total if self.total else 0.0
            lines.append(f"| {share:.1f}% | {samples} | `{name.replace('|', '/')}` |")
        return "\n".join(lines)


def own_time(path: Path, *, by_line: bool, thread: str | None = None, top: int = 20) -> Table:
    """Samples by innermost Python frame (own time), per line or per function, optionally for one thread."""
    counts: Counter[str] = Counter()
    total = 0
    for stack in stacks(path, thread):
        total += stack.samples
        leaf = stack.frames[-1] if stack.frames else "<idle>"
        counts[leaf if by_line else function_of(leaf)] += stack.samples
    kind = "line" if by_line else "function"
    where = f"thread {thread}" if thread else "all threads"
    return Table(f"own time by {kind}, {where}", total, counts.most_common(top))


def inclusive(path: Path, *, prefix: str, thread: str | None = None, top: int = 20) -> Table:
    """Samples in which a function of files starting with `prefix` is on the stack (each counted once)."""
    counts: Counter[str] = Counter()
    total = 0
    for stack in stacks(path, thread):
        total += stack.samples
        seen = {
            function_of(f)
            for f in stack.frames
            if (m := FRAME.match(f)) and m["file"].startswith(prefix) and m["function"] not in ENTRY_POINTS
        }
        for name in seen:
            counts[name] += stack.samples
    where = f"thread {thread}" if thread else "all threads"
    return Table(f"inclusive time of `{prefix}*` functions, {where}", total, counts.most_common(top))
