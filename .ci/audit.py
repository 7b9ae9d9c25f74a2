"""`make audit`: known advisories of the versions the image ships (requirements/runtime.txt), from PyPI's own
advisory data (the PyPA advisory database, as PyPI serves it). Standard library only.

1. Where PyPI's per-version JSON API answers (`/pypi/<name>/<version>/json`), pip-audit audits the lock file
   with it (`--vulnerability-service pypi`), strictly: a package it cannot look up fails the audit.
2. Where only the per-project JSON API answers (some mirrors and proxies, this project's CI machines among
   them, serve `/pypi/<name>/json` but not the per-version one, and no OSV endpoint is reachable), pip-audit
   would skip every package and report nothing found, so this checks what that API can tell: the
   advisories of each package's latest release. A pin that is the latest release is audited; a pin behind it
   is listed as not audited here (`make lock` moves it to the latest, which then is).
Exit 1 when an advisory affects a pinned version, else 0; what was and was not audited is printed either way.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements" / "runtime.txt"
PYPI = "https://pypi.org/pypi"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def pins(lock: Path) -> dict[str, str]:
    return dict(PIN.findall(lock.read_text()))


def fetch(url: str) -> dict[str, object] | None:
    """The JSON at `url`, or None when PyPI (or the proxy before it) does not serve it."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError:
        return None


def pip_audit(lock: Path) -> int:
    command = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--require-hashes", "--disable-pip"]
    return subprocess.run([*command, "--vulnerability-service", "pypi", "--strict"], check=False).returncode


def latest_release_audit(pinned: dict[str, str]) -> int:
    with ThreadPoolExecutor(8) as pool:
        projects = dict(zip(pinned, pool.map(lambda name: fetch(f"{PYPI}/{name}/json"), pinned), strict=True))
    found, behind, missing = [], [], []
    for name, version in sorted(pinned.items()):
        project = projects[name]
        if project is None:
            missing.append(name)
            continue
        latest = str(project["info"]["version"])  # type: ignore[index]
        if latest != version:
            behind.append(f"{name} {version} (latest {latest})")
            continue
        for advisory in project.get("vulnerabilities") or []:  # type: ignore[union-attr]
            found.append(f"{name} {version}: {advisory['id']} (fixed in {', '.join(advisory['fixed_in'])})")
    audited = len(pinned) - len(behind) - len(missing)
    print(f"audited {audited} of {len(pinned)} pins with PyPI's advisories of their latest release")
    if behind:
        print("not audited here, behind their latest release (make lock): " + "; ".join(behind))
    if missing:
        print("not found on PyPI: " + ", ".join(missing))
    for line in found:
        print(f"ADVISORY {line}")
    return 1 if found or missing else 0


def main() -> int:
    pinned = pins(LOCK)
    name, version = next(iter(pinned.items()))
    if fetch(f"{PYPI}/{name}/{version}/json") is not None:
        print(f"PyPI's per-version API answers: pip-audit on {LOCK.name}")
        return pip_audit(LOCK)
    print(
        f"PyPI's per-version API does not answer here ({PYPI}/{name}/{version}/json), so pip-audit would skip "
        "every package; checking the latest releases' advisories instead"
    )
    return latest_release_audit(pinned)


if __name__ == "__main__":
    sys.exit(main())
