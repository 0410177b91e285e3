"""End-to-end fixtures: the whole app started the way `make run` starts it, and Chromium.

The app runs as a separate process (`python -m devtools.run`: local Stripe emulator, seeded
plan, migrations, Reflex in production mode on one port) against a fresh SQLite database.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devtools.liveapp import CHROMIUM, CHROMIUM_ARGS, LiveApp, start_live_app


@pytest.fixture(scope="session")
def live_app(tmp_path_factory) -> LiveApp:
    """Start the app once for the whole end-to-end session."""
    app = start_live_app(tmp_path_factory.mktemp("live_app"))
    yield app
    app.stop()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Use Debian's Chromium: Playwright cannot download its own browser here."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"Chromium not found at {CHROMIUM}; `make test` installs it")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def base_url(live_app) -> str:
    """Relative `page.goto("/plan")` calls go to the live app."""
    return live_app.url
