"""Start the whole app the way `make run` does, on free ports, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 900  # a first build installs the frontend's packages
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Debian's Chromium, headless as root, with no background traffic to the (closed) internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Chromium 156 builds its omnibox popup as web pages of its own (WebUI), loaded for each
    # new window: measured, ~280 ms of a renderer's main thread beside the page under test,
    # which on this two-core machine pushed the checkout card field's p95 from 195 to 333 ms.
    # A person's browser built its toolbar long before they opened our page: not ours to time.
    "--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup,WebUIOmniboxFullPopup",
]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveApp:
    """A running app (`python -m devtools.run`) and what callers may need behind it."""

    url: str
    database_url: str
    stripe_api_base: str
    log_path: Path
    env: dict[str, str] = field(repr=False)
    process: subprocess.Popen = field(repr=False)

    def log(self) -> str:
        """The app's output so far (for failure messages)."""
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        """Ctrl-C, as a person would: the launcher stops Reflex and the emulator."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STRIPE_", "APP_", "PYTEST_"))
        and k not in {"DATABASE_URL", "REDIS_URL", "SMTP_URL"}
    }


def _wait_until_up(app: LiveApp) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if app.process.poll() is not None:
            raise RuntimeError(f"the app exited with {app.process.returncode}:\n{app.log()}")
        try:
            # Said as a TLS proxy on this host would say it: an app in production mode that
            # trusts 127.0.0.1 answers plain HTTP only through it. Anywhere else it is ignored.
            https = {"X-Forwarded-Proto": "https"}
            health = httpx.get(f"{app.url}/api/v1/health", headers=https, timeout=2)
            page = httpx.get(f"{app.url}/", headers=https, timeout=5, follow_redirects=True)
            if health.status_code == 200 and page.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)  # polling interval while the server starts
    app.stop()
    raise RuntimeError(f"the app did not start in time:\n{app.log()}")


def start_live_app(workdir: Path, **extra_env: str) -> LiveApp:
    """Start `python -m devtools.run` with a fresh SQLite database and emulator in `workdir`."""
    from subscription_app.crypto import generate_key

    workdir.mkdir(parents=True, exist_ok=True)
    port, emulator_port = free_port(), free_port()
    database_url = f"sqlite:///{workdir / 'app.db'}"
    log_path = workdir / "app.log"
    tools_bin = ROOT / ".tools" / "node_modules" / ".bin"
    env = _clean_env()
    env.update(
        PATH=f"{tools_bin}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        REFLEX_USE_SYSTEM_BUN="1",
        REFLEX_TELEMETRY_ENABLED="false",
        APP_ENV="development",
        APP_PORT=str(port),
        APP_URL=f"http://127.0.0.1:{port}",
        STRIPE_EMULATOR_PORT=str(emulator_port),
        STRIPE_EMULATOR_STATE=str(workdir / "stripe-emulator.pickle"),
        DATABASE_URL=database_url,
        DEV_SECRETS_FILE=str(workdir / "dev-secrets.env"),
        APP_ENCRYPTION_KEYS=generate_key(),
        APP_BLIND_INDEX_KEY=generate_key(),
        # Every simulated person here comes from 127.0.0.1: per-address card-testing limits
        # would count the whole suite as one card tester. Per-person limits stay as shipped.
        RATE_LIMIT_CARD_ATTEMPTS_PER_ADDRESS="100000",
        RATE_LIMIT_SETUP_INTENTS_PER_ADDRESS="100000",
    )
    env.update(extra_env)  # the caller's values win
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devtools.run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    app = LiveApp(
        url=f"http://127.0.0.1:{port}",
        database_url=database_url,
        stripe_api_base=f"http://127.0.0.1:{emulator_port}",
        log_path=log_path,
        env=env,
        process=process,
    )
    _wait_until_up(app)
    return app
