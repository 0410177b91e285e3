"""Nothing secret reaches the browser: compiled frontend, websocket state, responses, logs."""

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from devtools.liveapp import ROOT
from tests.e2e.helpers import register, subscribe_with_card, unique_email

pytestmark = pytest.mark.e2e


def configured_secrets(live_app) -> dict[str, str]:
    """Every secret the running app was configured with (env and generated dev secrets)."""
    values = {
        "STRIPE_SECRET_KEY": "sk_test_local_emulator",  # what the launcher gives the app
        "APP_ENCRYPTION_KEYS": live_app.env["APP_ENCRYPTION_KEYS"],
    }
    secrets_file = Path(live_app.env["DEV_SECRETS_FILE"])
    for line in secrets_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, value)
    assert {"APP_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "APP_ENCRYPTION_KEYS"} <= set(values)
    return values


def test_no_configured_secret_in_frontend_state_responses_or_logs(page: Page, live_app):
    secrets = configured_secrets(live_app)
    seen: list[str] = []
    page.on(
        "websocket",
        lambda ws: (
            ws.on("framereceived", lambda payload: seen.append(str(payload))),
            ws.on("framesent", lambda payload: seen.append(str(payload))),
        ),
    )

    def keep_body(response):
        if response.url.startswith(live_app.url):
            try:
                seen.append(response.text())
            except Exception:  # redirects and aborted responses have no body
                seen.append(response.url)

    page.on("response", keep_body)
    register(page, unique_email("secrets"))
    subscribe_with_card(page)
    page.goto("/dashboard")
    expect(page.get_by_text("Next renewal")).to_be_visible()

    traffic = "\n".join(seen)
    assert "dashboard" in traffic.lower()  # the recorder did see the app's traffic
    compiled = "\n".join(
        p.read_text(errors="ignore")
        for p in (ROOT / ".web" / "build" / "client").rglob("*")
        if p.is_file() and p.suffix in {".js", ".html", ".json", ".css", ".map"}
    )
    assert len(compiled) > 10_000  # the build is there
    log = live_app.log_path.read_text(errors="ignore")
    for name, value in secrets.items():
        for part in value.split(","):
            assert part not in compiled, f"{name} in the compiled frontend"
            assert part not in traffic, f"{name} sent to the browser"
            assert part not in log, f"{name} in the app's log"
    # No raw Stripe customer or subscription id ever reaches the browser.
    assert "cus_" not in traffic and "sub_" not in traffic
