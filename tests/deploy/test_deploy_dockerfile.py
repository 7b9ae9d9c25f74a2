"""The Dockerfile and .dockerignore, parsed here (no Docker engine on the test machines)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, as (KEYWORD, arguments) with continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue  # comments and parser directives
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert match, f"cannot parse FROM {args}"
            stages.append(Stage(base=match[1], name=match[2]))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def resolve(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), value)


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(parsed: tuple[dict[str, str], list[Stage]]) -> Stage:
    return parsed[1][-1]


def test_multi_stage_on_slim_python_311(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = parsed
    assert len(stages) >= 2, "builder and runtime stages expected"
    for stage in stages:
        base = resolve(stage.base, args)
        assert re.fullmatch(r"python:3\.11[\w.]*-slim[\w.-]*", base), base
    # The runtime stage takes only the venv from the builder, nothing from the build context.
    copies = stages[-1].all("COPY")
    assert copies, "final stage copies nothing"
    for copy in copies:
        assert copy.startswith(f"--from={stages[0].name} "), f"copies from context: {copy}"


def test_final_stage_user_is_numeric_non_root(final: Stage) -> None:
    user = final.last("USER").split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can check it without the image's /etc/passwd.
    assert user.isdigit(), f"USER {user} is not a numeric UID"
    assert int(user) != 0


def test_entrypoint_runs_the_worker_module(final: Stage) -> None:
    assert json.loads(final.last("ENTRYPOINT")) == ["python", "-m", "worker"]
    assert json.loads(final.last("CMD")) == ["run"]


def test_stops_with_sigterm(final: Stage) -> None:
    assert final.last("STOPSIGNAL") == "SIGTERM"


def test_healthcheck_probes_healthz_with_python(final: Stage, metrics_port: int) -> None:
    check = final.last("HEALTHCHECK")
    options, _, command = check.partition(" CMD ")
    assert command, "HEALTHCHECK without CMD"
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"], "slim images have no curl: use the interpreter"
    assert "urllib.request" in argv[2] and "/healthz" in argv[2]
    # Falls back to the settings default when WORKER_METRICS_PORT is unset.
    assert f"'{metrics_port}'" in argv[2]
    assert "--timeout=" in options


def test_expose_and_env_match_the_metrics_port_default(final: Stage, metrics_port: int) -> None:
    assert final.all("EXPOSE") == [str(metrics_port)]
    env = " ".join(final.all("ENV"))
    assert re.search(rf"\bWORKER_METRICS_PORT={metrics_port}\b", env)


def test_no_build_tools_or_package_installs_in_final_stage(final: Stage) -> None:
    runs = " ".join(final.all("RUN"))
    for forbidden in ("apt-get", "apt ", "apk ", "gcc", "build-essential", "pip install"):
        assert forbidden not in runs, f"{forbidden!r} in the runtime stage"


def test_oci_labels(final: Stage) -> None:
    labels = " ".join(final.all("LABEL"))
    for key in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_builder_installs_the_package_from_copied_sources(
    parsed: tuple[dict[str, str], list[Stage]],
) -> None:
    builder = parsed[1][0]
    sources = [src for copy in builder.all("COPY") for src in copy.split()[:-1]]
    assert {"pyproject.toml", "README.md", "worker"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    runs = " && ".join(builder.all("RUN"))
    assert re.search(r"pip wheel (\S+ )*--no-build-isolation (\S+ )*\.(\s|$)", runs), "the package built from ."
    assert re.search(r"pip install --no-deps /tmp/wheel/\*\.whl", runs)


def test_every_dependency_of_the_image_comes_from_the_lock_files_with_their_hashes(
    parsed: tuple[dict[str, str], list[Stage]],
) -> None:
    """Issue 20, item 8: a plain `pip install .` took whatever versions the index offered that day."""
    builder = parsed[1][0]
    copied = [src for copy in builder.all("COPY") for src in copy.split()[:-1]]
    assert {"requirements/runtime.txt", "requirements/build.txt"} <= set(copied)
    installs = [step for run in builder.all("RUN") for step in run.split("&&") if "pip install" in step]
    assert installs
    for step in installs:
        locked = re.search(r"--require-hashes --no-deps -r requirements/(runtime|build)\.txt", step)
        assert locked or re.search(r"--no-deps /tmp/wheel/", step), f"unpinned: {step.strip()}"


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's matching: `**` spans directories, `*` and `?` stay within one, [...] is a class; a
    pattern that matches a directory also excludes everything below it."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i : end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex + "(?:/.*)?")


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    excluded = False
    for pattern in patterns:  # the last matching pattern wins
        negate = pattern.startswith("!")
        if dockerignore_regex(pattern.lstrip("!").strip("/")).fullmatch(path):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_junk_out_and_the_package_in() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for junk in (
        ".git/HEAD",
        ".venv/bin/python",
        ".pytest_cache/v/x",
        ".mypy_cache/3.11/x",
        ".ruff_cache/x",
        "worker/__pycache__/config.cpython-311.pyc",
    ):
        assert dockerignore_excludes(patterns, junk), f"{junk} would be sent to the build"
    needed = ["pyproject.toml", "README.md", "worker/__init__.py"]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "worker").rglob("*") if p.is_file()]
    for path in needed:
        if "__pycache__" in path:
            continue
        assert not dockerignore_excludes(patterns, path), f"{path} is needed but excluded"


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint() -> None:
    command = ["hadolint", str(DOCKERFILE)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
