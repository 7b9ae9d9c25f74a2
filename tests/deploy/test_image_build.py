"""The pure parts of `deploy/image/build.py`: where debootstrap's mirror comes from, and what the build's pip is
told. No buildah, Docker or network."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from tests.deploy.conftest import ROOT


@pytest.fixture(scope="module")
def build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_build", ROOT / "deploy/image/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_deb822_sources(build: ModuleType) -> None:
    text = """Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
URIs: http://off.example/debian
Suites: trixie
Enabled: no
"""
    assert build.parse_sources(text, deb822=True) == [
        (
            ["http://mirror.example/debian"],
            ["bookworm", "bookworm-updates"],
            "/usr/share/keyrings/debian-archive-keyring.gpg",
        )
    ]


def test_one_line_sources(build: ModuleType) -> None:
    text = """# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://a.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb http://b.example/debian bookworm-security main
"""
    assert build.parse_sources(text, deb822=False) == [
        (["http://a.example/debian"], ["bookworm"], "/k.gpg"),
        (["http://b.example/debian"], ["bookworm-security"], None),
    ]


def test_pip_environment_wins_over_install_over_global(build: ModuleType) -> None:
    listed = """:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.index-url='https://global.example/simple'
install.index-url='https://install.example/simple'
global.cert='/etc/ssl/certs/ca-certificates.crt'
download.index-url='https://download.example/simple'
"""
    settings = build.parse_pip_config(listed)
    assert settings["index-url"] == "https://install.example/simple"
    assert settings["default-timeout"] == "180"
    assert settings["cert"] == "/etc/ssl/certs/ca-certificates.crt"
    listed += ":env:.index-url='https://env.example/simple'\n"
    assert build.parse_pip_config(listed)["index-url"] == "https://env.example/simple"


def test_pip_conf_keeps_registry_settings_and_points_at_the_mounted_ca(build: ModuleType) -> None:
    settings = {"index-url": "https://i.example/simple", "find-links": "/opt/wheels", "cert": "/host/ca.crt"}
    conf = build.pip_conf(settings, with_ca=True)
    assert conf.splitlines() == ["[global]", "index-url = https://i.example/simple", f"cert = {build.PIP_CA_IN_BUILD}"]
    assert build.pip_conf({"find-links": "/opt/wheels"}, with_ca=False) == ""
