#!/usr/bin/env python3
"""Build the worker's container image, with or without a Docker engine (`make image`).

    python3 deploy/image/build.py [--tag NAME] [--json]

The first path that works is taken, and one line says which and why:

1. `docker build` (BuildKit) when `docker info` answers;
2. else `buildah build --isolation chroot` (no engine, no daemon) on the official `python:3.11-slim-bookworm`
   when it can be pulled;
3. else the same on a local Debian bookworm base: `debootstrap --variant=minbase` with Debian's python3 (and
   `python` linked to it), from the Debian mirror apt uses on this machine, trimmed of apt lists and docs,
   cached in `~/.cache/group-events-worker/` by suite and date, so it is made once a day at most.

The build's pip reaches the package registry the way this machine's pip does: the index settings of
`pip config list` (files and PIP_* variables) and its CA bundle go in as build secrets, mounted for the one
`pip install` and stored in no layer. Nothing about this machine is written into the repository.

Standard library only: it runs with any python3 >= 3.11, before `make install`.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_BASE = "docker.io/library/python:3.11-slim-bookworm"
SUITE = "bookworm"
PACKAGES = "python3,python3-venv,ca-certificates"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "group-events-worker"
BASE_REPOSITORY = "localhost/group-events-worker-base"
# pip settings that decide how the registry is reached; paths on this machine (find-links, ...) stay out.
PIP_REGISTRY_KEYS = ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "default-timeout", "retries")
# Where the Dockerfile mounts the secrets (`RUN --mount=type=secret`).
PIP_CONF_SECRET, PIP_CA_SECRET = "pip.conf", "pip-ca.crt"
PIP_CA_IN_BUILD = f"/run/secrets/{PIP_CA_SECRET}"
# The Dockerfile's build arguments and the OCI labels they fill.
LABELS = {
    "VERSION": "org.opencontainers.image.version",
    "VCS_REF": "org.opencontainers.image.revision",
    "BUILD_DATE": "org.opencontainers.image.created",
}


@dataclass(frozen=True)
class Result:
    image: str
    tool: str  # "docker" or "buildah"
    base: str
    why: str
    seconds: float
    size_mb: float


def log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def probe(command: Sequence[str], timeout: float) -> str | None:
    """None when the command succeeds, else why not (its last line of output)."""
    if shutil.which(command[0]) is None:
        return f"{command[0]} not installed"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"{' '.join(command[:2])}: no answer within {timeout:.0f} s"
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
    return f"{' '.join(command[:2])}: {lines[-1].strip()}"


def run(command: Sequence[str], **kwargs: object) -> None:
    log("$ " + " ".join(command))
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def output(command: Sequence[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


# ---- the Debian base ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mirror:
    uri: str
    keyring: str | None


def parse_sources(text: str, *, deb822: bool) -> list[tuple[list[str], list[str], str | None]]:
    """(URIs, suites, Signed-By) of the `deb` entries of one apt sources file, deb822 (`.sources`) or one-line."""
    entries: list[tuple[list[str], list[str], str | None]] = []
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                entries.append(
                    (fields.get("URIs", "").split(), fields.get("Suites", "").split(), fields.get("Signed-By"))
                )
        return entries
    for line in text.splitlines():
        match = re.match(r"\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
        if match:
            signed_by = re.search(r"signed-by=(\S+)", match[1] or "")
            entries.append(([match[2]], [match[3]], signed_by[1] if signed_by else None))
    return entries


def apt_sources() -> list[tuple[list[str], list[str], str | None]]:
    """Every `deb` entry of /etc/apt/sources.list, then of sources.list.d (one-line files, then deb822)."""
    one_line = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
    entries = [
        e for path in one_line if Path(path).is_file() for e in parse_sources(Path(path).read_text(), deb822=False)
    ]
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        entries += parse_sources(Path(path).read_text(), deb822=True)
    return entries


def debian_mirror(suite: str) -> Mirror:
    for uris, suites, keyring in apt_sources():
        if suite in suites and uris:
            return Mirror(uris[0], keyring if keyring and Path(keyring).is_file() else None)
    raise SystemExit(f"image: no apt source for Debian {suite} in /etc/apt/sources.list*: debootstrap needs a mirror")


def trim(rootfs: Path) -> None:
    """What an image does not need: downloaded packages, apt lists, docs (but copyrights), man pages, locales."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/man", "usr/share/info"):
        for path in rootfs.glob(pattern):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for path in (rootfs / "usr/share/locale").glob("*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in sorted((rootfs / "usr/share/doc").rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.name != "copyright":
            path.unlink()


def debootstrap_tarball(suite: str, today: str) -> Path:
    """The base's root filesystem as a tar in the cache; older ones of the suite are removed."""
    tarball = CACHE / f"debootstrap-{suite}-{today}.tar"
    if tarball.exists():
        log(f"cached Debian base {tarball}")
        return tarball
    mirror = debian_mirror(suite)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=CACHE) as work:
        rootfs = Path(work) / "rootfs"
        keyring = [f"--keyring={mirror.keyring}"] if mirror.keyring else []
        started = time.monotonic()
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={PACKAGES}",
            *keyring,
            suite,
            str(rootfs),
            mirror.uri,
        ]
        log(f"debootstrap from {mirror.uri}, output in {CACHE / 'debootstrap.log'}")
        with (CACHE / "debootstrap.log").open("w") as debootstrap_log:
            run(command, stdout=debootstrap_log, stderr=subprocess.STDOUT)
        log(f"debootstrap took {time.monotonic() - started:.0f} s")
        trim(rootfs)
        # The Dockerfile, like the official image, calls the interpreter `python`.
        (rootfs / "usr/bin/python").symlink_to("python3")
        partial = tarball.with_suffix(".partial")
        run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."])
        partial.rename(tarball)
    for old in CACHE.glob(f"debootstrap-{suite}-*.tar"):
        if old != tarball:
            old.unlink()
    return tarball


def debootstrap_base(suite: str) -> str:
    """A buildah image of the cached base, tagged `<suite>-<date>`; made from the tarball when missing."""
    today = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    image = f"{BASE_REPOSITORY}:{suite}-{today}"
    if probe(["buildah", "inspect", "--type", "image", image], 30) is None:
        return image
    tarball = debootstrap_tarball(suite, today)
    container = output(["buildah", "from", "scratch"])
    try:
        mount = output(["buildah", "mount", container])
        run(["tar", "-C", mount, "--numeric-owner", "-xf", str(tarball)])
        env = ["--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--env", "LANG=C.UTF-8"]
        run(["buildah", "config", *env, "--cmd", "python3", container])
        run(["buildah", "commit", "--quiet", container, image], stdout=subprocess.DEVNULL)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    for line in output(
        ["buildah", "images", "--format", "{{.Name}}:{{.Tag}}", "--filter", f"reference={BASE_REPOSITORY}"]
    ).splitlines():
        if line.startswith(f"{BASE_REPOSITORY}:{suite}-") and line != image:
            subprocess.run(["buildah", "rmi", line], capture_output=True)
    return image


# ---- pip's way to the registry -----------------------------------------------------------------------------


# `pip config list` names a setting `<section>.<key>`; for `pip install` the environment wins over the
# [install] section, which wins over [global].
PIP_SECTION_RANK = {"global": 0, "install": 1, ":env:": 2}


def parse_pip_config(listed: str) -> dict[str, str]:
    """The settings `pip install` would use, from the output of `pip config list`."""
    found: list[tuple[int, str, str]] = []
    for line in listed.splitlines():
        match = re.fullmatch(r"(.*)\.([\w-]+)=(.*)", line.strip())
        if match and match[1] in PIP_SECTION_RANK:
            found.append((PIP_SECTION_RANK[match[1]], match[2], str(ast.literal_eval(match[3]))))
    return {key: value for _, key, value in sorted(found, key=lambda item: item[0])}


def pip_conf(settings: dict[str, str], *, with_ca: bool) -> str:
    """The build's pip.conf: how to reach the registry, and the CA bundle at its mount point in the build."""
    lines = [f"{key} = {settings[key]}" for key in PIP_REGISTRY_KEYS if key in settings]
    lines += [f"cert = {PIP_CA_IN_BUILD}"] if with_ca else []
    return "[global]\n" + "".join(line + "\n" for line in lines) if lines else ""


def pip_secrets(directory: Path) -> dict[str, Path]:
    """The build secrets: a pip.conf with the registry settings, and the CA bundle pip verifies with here."""
    try:
        command = [sys.executable, "-m", "pip", "config", "list"]
        settings = parse_pip_config(subprocess.run(command, capture_output=True, text=True, timeout=60).stdout)
    except (OSError, subprocess.TimeoutExpired):
        settings = {}
    ca = settings.get("cert") or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    secrets = {PIP_CA_SECRET: Path(ca)} if ca and Path(ca).is_file() else {}
    if conf := pip_conf(settings, with_ca=bool(secrets)):
        (directory / PIP_CONF_SECRET).write_text(conf)
        secrets[PIP_CONF_SECRET] = directory / PIP_CONF_SECRET
    log(f"pip in the build: {', '.join(conf.splitlines()[1:]) or 'its defaults'}")
    return secrets


# ---- the build ---------------------------------------------------------------------------------------------


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def label_args() -> dict[str, str]:
    """The Dockerfile's ARGs behind its OCI labels: version, commit, date."""
    try:
        revision = output(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"VERSION": version(), "VCS_REF": revision, "BUILD_DATE": created}


def choose() -> tuple[str, str | None, str]:
    """(tool, base image or None for the Dockerfile's default, why)."""
    no_docker = probe(["docker", "info"], 20)
    if no_docker is None:
        return "docker", None, "a Docker engine answers"
    if shutil.which("buildah") is None:
        raise SystemExit(f"image: needs a Docker engine or buildah ({no_docker}; buildah not installed)")
    no_pull = probe(["buildah", "pull", "--quiet", "--retry", "1", OFFICIAL_BASE], 180)
    if no_pull is None:
        return "buildah", OFFICIAL_BASE, f"no Docker engine ({no_docker}); the official base can be pulled"
    if shutil.which("debootstrap") is None:
        raise SystemExit(f"image: {OFFICIAL_BASE} cannot be pulled ({no_pull}) and debootstrap is not installed")
    why = f"no Docker engine ({no_docker}); {OFFICIAL_BASE} cannot be pulled ({no_pull})"
    return "buildah", debootstrap_base(SUITE), why


def image_size_mb(tool: str, image: str) -> float:
    if tool == "docker":
        return int(output(["docker", "image", "inspect", "--format", "{{.Size}}", image])) / 1e6
    # buildah prints the size rounded to three digits in decimal units (`189 MB`).
    number, unit = output(["buildah", "images", "--noheading", "--format", "{{.Size}}", image]).split()
    return float(number) * {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}[unit]


def build(tag: str) -> Result:
    tool, base, why = choose()
    log(f"{tool} {'on ' + base if base else 'on the Dockerfile default base'}: {why}")
    with tempfile.TemporaryDirectory(prefix="gew-pip-") as secrets_dir:
        secrets = pip_secrets(Path(secrets_dir))
        labels = label_args()
        options = [arg for name, value in labels.items() for arg in ("--build-arg", f"{name}={value}")]
        options += ["--tag", tag, "--file", str(ROOT / "Dockerfile")]
        options += [arg for name, src in secrets.items() for arg in ("--secret", f"id={name},src={src}")]
        if base:
            options += ["--build-arg", f"PYTHON_IMAGE={base}"]
        started = time.monotonic()
        if tool == "docker":
            run(["docker", "build", *options, str(ROOT)], env={**os.environ, "DOCKER_BUILDKIT": "1"})
        else:
            # --format docker: the OCI image format has no HEALTHCHECK. --layers: warm builds reuse steps, but
            # buildah 1.28 finds a LABEL step in its cache by the text before ARG expansion, so the labels that
            # change every build are also given here, where they apply to the image itself.
            options += [arg for name, value in labels.items() for arg in ("--label", f"{LABELS[name]}={value}")]
            run(["buildah", "build", "--isolation", "chroot", "--format", "docker", "--layers", *options, str(ROOT)])
        seconds = time.monotonic() - started
    return Result(tag, tool, base or "Dockerfile default", why, round(seconds, 1), round(image_size_mb(tool, tag), 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default=None, help="image name (default group-events-worker:<version>)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    try:
        result = build(args.tag or f"group-events-worker:{version()}")
    except subprocess.CalledProcessError as error:
        log(f"failed (exit {error.returncode}): {' '.join(map(str, error.cmd))}")
        return 1
    if args.json:
        print(json.dumps(result.__dict__))
    else:
        print(f"image: built {result.image} with {result.tool} on {result.base}")
        print(f"image: {result.seconds} s, {result.size_mb} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
