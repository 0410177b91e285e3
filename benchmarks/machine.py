"""What the benchmarks record about where their figures were taken (shared by all of them)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_text(command: list[str], cwd: Path = ROOT) -> str:
    """A command's standard output ("" if it cannot run): versions, git state."""
    try:
        return subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        ).stdout.rstrip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def describe(packages: Iterable[str]) -> dict[str, Any]:
    """The machine (CPU, cores, memory, platform, load) and the versions of `packages`.

    Callers add what only they use (a server's version) to `versions`.
    """
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions: dict[str, Any] = {}
    for package in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
        "versions": versions,
    }
