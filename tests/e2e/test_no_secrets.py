"""Nothing secret reaches the browser: compiled frontend, websocket state, responses, logs."""

import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from devtools.liveapp import ROOT
from tests.e2e.conftest import register, subscribe_with_card, unique_email

pytestmark = pytest.mark.e2e


def configured_secrets(live_app) -> dict[str, str]:
    """Every secret the running app was configured with (env and generated dev secrets)."""
    values = {
        "STRIPE_SECRET_KEY": "sk_test_local_emulator",  # what the launcher gives the app
        "APP_ENCRYPTION_KEYS": live_app.env["APP_ENCRYPTION_KEYS"],
        "APP_BLIND_INDEX_KEY": live_app.env["APP_BLIND_INDEX_KEY"],
    }
    secrets_file = Path(live_app.env["DEV_SECRETS_FILE"])
    for line in secrets_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, value)
    assert {
        "APP_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "APP_ENCRYPTION_KEYS",
        "APP_BLIND_INDEX_KEY",
    } <= set(values)
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
    handoffs: list[str] = []
    page.on(
        "request",
        lambda request: (
            handoffs.append(json.loads(request.post_data or "{}").get("handoff", ""))
            if request.url.endswith("/api/v1/auth/session") and request.method == "POST"
            else None
        ),
    )
    register(page, unique_email("secrets"))
    subscribe_with_card(page)
    page.goto("/dashboard")
    expect(page.get_by_text("Next renewal")).to_be_visible()

    # The login's own secrets: the session token (in the HttpOnly cookie only) and the
    # single-use handoff code that the page exchanged for it.
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "sa_session")
    assert len(token) > 20
    assert len(handoffs) == 1 and len(handoffs[0]) > 20
    handoff = handoffs[0]
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
    assert token not in compiled and token not in log
    assert token not in traffic, "the session token reached page scripts"
    assert handoff not in compiled and handoff not in log, "the handoff code was kept or logged"
    # The code reaches the page once, in the one script that posts it, and is not kept in state.
    assert sum(frame.count(handoff) for frame in seen) == 1
    again = page.request.post(f"{live_app.url}/api/v1/auth/session", data={"handoff": handoff})
    assert again.status == 400  # used once, never again
    # No raw Stripe customer or subscription id ever reaches the browser.
    assert "cus_" not in traffic and "sub_" not in traffic
