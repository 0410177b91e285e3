"""End-to-end fixtures: the whole app started the way `make run` starts it, and Chromium.

The app runs as a separate process (`python -m devtools.run`: local Stripe emulator, seeded
plan, migrations, Reflex in production mode on one port) against a fresh SQLite database.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from subscription_app import crypto
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
START_TIMEOUT_SECONDS = 900  # a first build installs the frontend's packages
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class LiveApp:
    """The running app and what tests may need to reach behind it."""

    url: str
    database_url: str
    stripe_api_base: str
    log_path: Path

    def log(self) -> str:
        """The app's output so far (for failure messages)."""
        return self.log_path.read_text(errors="replace")[-5000:]


def _wait_until_up(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the app exited with {proc.returncode}:\n{log_path.read_text()[-5000:]}"
            )
        try:
            health = httpx.get(f"{url}/api/v1/health", timeout=2)
            page = httpx.get(f"{url}/", timeout=5, follow_redirects=True)
            if health.status_code == 200 and page.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)  # polling interval while waiting for the server to answer
    raise RuntimeError(f"the app did not start in time:\n{log_path.read_text()[-5000:]}")


@pytest.fixture(scope="session")
def live_app(tmp_path_factory) -> LiveApp:
    """Start the app once for the whole end-to-end session."""
    workdir = tmp_path_factory.mktemp("live_app")
    port, emulator_port = free_port(), free_port()
    database_url = f"sqlite:///{workdir / 'e2e.db'}"
    log_path = workdir / "app.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STRIPE_", "APP_", "PYTEST_"))
        and k not in {"DATABASE_URL", "REDIS_URL", "SMTP_URL"}
    }
    tools_bin = ROOT / ".tools" / "node_modules" / ".bin"
    env.update(
        PATH=f"{tools_bin}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        REFLEX_USE_SYSTEM_BUN="1",
        REFLEX_TELEMETRY_ENABLED="false",
        APP_ENV="development",
        APP_PORT=str(port),
        APP_URL=f"http://127.0.0.1:{port}",
        STRIPE_EMULATOR_PORT=str(emulator_port),
        DATABASE_URL=database_url,
        DEV_SECRETS_FILE=str(workdir / "dev-secrets.env"),
        STRIPE_EMULATOR_STATE=str(workdir / "stripe-emulator.pickle"),
        APP_ENCRYPTION_KEYS=crypto.generate_key(),
    )
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(proc, url, log_path)
        yield LiveApp(
            url=url,
            database_url=database_url,
            stripe_api_base=f"http://127.0.0.1:{emulator_port}",
            log_path=log_path,
        )
    finally:
        # Ctrl-C, as a person would: the launcher stops Reflex and the emulator.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


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
