"""The pinned dependencies (issue 20, item 8): the lock files of requirements/ pin every dependency of
pyproject.toml at a version its range allows, each with hashes; the dev lock holds the runtime pins unchanged
and the build backend; requirements/build.in is pyproject's build-system; the floors are past the advisories
the issue names; `make install`, the Dockerfile and CI install from the locks and CI runs the advisory check.
Offline: `make lock` and `make audit` reach the index, these only read files."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PIN = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?: ;[^\\]*)? \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", re.M
)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def locked(name: str) -> dict[str, Version]:
    text = (LOCKS / name).read_text()
    pins = {canonicalize_name(m[1]): Version(m[2]) for m in PIN.finditer(text)}
    listed = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", text, re.M)
    assert len(pins) == len(listed), f"{name}: a pin without hashes"
    return pins


def requirements(extra: str | None = None) -> list[Requirement]:
    project = PYPROJECT["project"]
    listed = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(text) for text in listed]


@pytest.mark.parametrize(("lock", "extras"), [("runtime.txt", []), ("dev.txt", ["dev", "local"])])
def test_every_dependency_is_pinned_with_hashes_within_its_range(lock: str, extras: list[str]) -> None:
    pins = locked(lock)
    wanted = requirements() + [r for extra in extras for r in requirements(extra)]
    for requirement in wanted:
        if requirement.name == PYPROJECT["project"]["name"]:
            continue  # the dev extra names the package's own `local` extra
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements/{lock}"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{lock}: {name}=={pins[name]}"


def test_the_dev_lock_keeps_the_runtime_pins_and_holds_the_build_backend() -> None:
    runtime, dev, build = locked("runtime.txt"), locked("dev.txt"), locked("build.txt")
    assert {name: dev.get(name) for name in runtime} == runtime, "tests would run other versions than the image"
    assert {name: dev.get(name) for name in build} == build


def test_build_in_is_the_build_system_of_pyproject() -> None:
    lines = (LOCKS / "build.in").read_text().splitlines()
    listed = [line for line in lines if line.strip() and not line.startswith("#")]
    assert listed == PYPROJECT["build-system"]["requires"]


@pytest.mark.parametrize(("name", "floor"), [("starlette", "1.0.1"), ("uvicorn", "0.48"), ("h11", "0.16")])
def test_the_floors_are_past_the_known_advisories(name: str, floor: str) -> None:
    (requirement,) = [r for r in requirements() if canonicalize_name(r.name) == name]
    assert not requirement.specifier.contains(_below(floor), prereleases=True)
    assert requirement.specifier.contains(Version(floor))


def _below(version: str) -> Version:
    """The release just before `version` in its last component (1.0.1 -> 1.0.0, 0.48 -> 0.47)."""
    parts = [int(p) for p in version.split(".")]
    parts[-1] -= 1
    return Version(".".join(map(str, parts)))


def test_install_and_ci_use_the_locks_and_audit_them() -> None:
    makefile = (ROOT / "Makefile").read_text()
    install = makefile[makefile.index("$(VENV)/.installed:") :].split("\n\n")[0]
    assert "--require-hashes --no-deps -r requirements/dev.txt" in install
    assert "--no-deps --no-build-isolation -e ." in install and "pip install --quiet -e '.[dev]'" not in install
    assert "requirements/dev.txt" in install.splitlines()[0], "a new lock reinstalls"
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.startswith("#")]
    steps = [line.split()[1] for line in commands if line.startswith("make ")]
    assert steps == ["install", "audit", "test"]
