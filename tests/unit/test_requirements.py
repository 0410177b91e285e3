"""Every installed package is pinned: what CI tests is what `make run` and production install."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What `pip freeze` leaves out of its list, as it does.
NOT_FROZEN = {"pip", "setuptools", "wheel", "distribute"}


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()  # PEP 503's normalized form


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        assert version, f"{path.name}: {line!r} is not pinned with =="
        pins[_name(re.sub(r"\[.*\]", "", name))] = version.strip()
    return pins


def test_requirements_apply_the_constraints():
    for name in ("requirements.txt", "requirements-emulator.txt"):
        assert "-c constraints.txt" in (ROOT / name).read_text().splitlines(), name


def test_every_installed_package_is_pinned_at_its_installed_version():
    """A new requirement, or one of its dependencies, that constraints.txt lacks or pins at
    another version fails here: freeze a fresh venv again (see constraints.txt)."""
    pins = _pins(ROOT / "constraints.txt")
    installed = {
        _name(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if _name(dist.metadata["Name"]) not in NOT_FROZEN
    }
    assert {name: v for name, v in installed.items() if pins.get(name) != v} == {}


def test_the_direct_requirements_agree_with_the_constraints():
    pins = _pins(ROOT / "constraints.txt")
    for name in ("requirements.txt", "requirements-emulator.txt", "requirements-dev.txt"):
        direct = _pins(ROOT / name)
        assert {n: v for n, v in direct.items() if pins.get(n) != v} == {}, name
