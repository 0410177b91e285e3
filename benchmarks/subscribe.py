"""Subscribe round trip: REST call and UI click to confirmation, against the emulator.

    python -m benchmarks.subscribe [--runs 50] [--ui-runs 50]

Starts the app the way `make run` does (fresh database and emulator), then measures
sequential subscribes, each by a new user with a fresh card:
- REST: POST /api/v1/subscriptions/subscribe until its answer;
- UI: click on "Subscribe" until the page says "You're subscribed!" (Chromium, headless).
Next to each total it prints the time spent inside Stripe calls in the same window: the
app's own calls (its Stripe client writes one line per call to STRIPE_TIMING_LOG) plus, for
the UI, the browser's Stripe.js calls. Total minus Stripe is our own overhead.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import stripe

from devtools.liveapp import CHROMIUM, CHROMIUM_ARGS, LiveApp, start_live_app


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def stripe_ms_between(log_path: Path, start: float, end: float) -> float:
    """Milliseconds the app spent in Stripe calls that started inside [start, end]."""
    total = 0.0
    if not log_path.exists():
        return total
    for line in log_path.read_text().splitlines():
        began, elapsed, *_ = line.split()
        if start <= float(began) <= end:
            total += float(elapsed)
    return total


def new_user(app: LiveApp) -> str:
    """Register and log in a fresh user through the API; returns the bearer token."""
    email = f"bench-{uuid.uuid4().hex[:12]}@example.com"
    body = {"email": email, "password": "bench-password-1"}
    httpx.post(f"{app.url}/api/v1/auth/register", json=body, timeout=30).raise_for_status()
    response = httpx.post(f"{app.url}/api/v1/auth/login", json=body, timeout=30)
    response.raise_for_status()
    return response.json()["access_token"]


def bench_rest(app: LiveApp, runs: int, timing_log: Path) -> tuple[list[float], list[float]]:
    """Sequential REST subscribes; returns (totals ms, stripe ms)."""
    sdk = stripe.StripeClient("sk_test_bench", base_addresses={"api": app.stripe_api_base})
    totals, in_stripe = [], []
    with httpx.Client(base_url=app.url, timeout=60) as client:
        for _ in range(runs):
            token = new_user(app)
            pm = sdk.v1.payment_methods.create(
                params={"type": "card", "card": {"token": "tok_visa"}}
            )
            began, clock = time.time(), time.perf_counter()
            response = client.post(
                "/api/v1/subscriptions/subscribe",
                json={"payment_method_id": pm.id},
                headers={"Authorization": f"Bearer {token}"},
            )
            elapsed = (time.perf_counter() - clock) * 1000
            ended = time.time()
            if response.status_code != 200 or response.json()["status"] != "active":
                raise RuntimeError(f"subscribe failed: {response.status_code} {response.text}")
            totals.append(elapsed)
            in_stripe.append(stripe_ms_between(timing_log, began, ended))
    return totals, in_stripe


def bench_ui(app: LiveApp, runs: int, timing_log: Path) -> tuple[list[float], list[float]]:
    """Sequential UI subscribes in Chromium; returns (totals ms, stripe ms)."""
    from playwright.sync_api import expect, sync_playwright

    totals, in_stripe = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(runs):
            token = new_user(app)
            context = browser.new_context(base_url=app.url)
            context.add_cookies([{"name": "sa_session", "value": token, "url": app.url}])
            page = context.new_page()
            browser_stripe_ms = []
            started_at: dict = {}

            def on_request(request, started_at=started_at):
                if request.url.startswith(app.stripe_api_base + "/v1/"):
                    started_at[request] = time.perf_counter()

            def on_done(request, started_at=started_at, sink=browser_stripe_ms):
                # Playwright's sync API calls handlers on this thread: no locking needed.
                if request in started_at:
                    sink.append((time.perf_counter() - started_at.pop(request)) * 1000)

            page.on("request", on_request)
            page.on("requestfinished", on_done)
            page.on("requestfailed", on_done)
            page.goto("/checkout")
            button = page.get_by_role("button", name="Subscribe", exact=True)
            expect(button).to_be_enabled(timeout=30_000)
            card = page.get_by_role("group", name="Card details")
            for placeholder, value in [
                ("number", "4242424242424242"),
                ("exp_month", "12"),
                ("exp_year", "34"),
                ("cvc", "123"),
                ("postal_code", "10001"),
            ]:
                card.get_by_placeholder(placeholder).fill(value)
            browser_stripe_ms.clear()
            began, clock = time.time(), time.perf_counter()
            button.click()
            expect(page.get_by_role("status")).to_contain_text("You're subscribed!", timeout=30_000)
            elapsed = (time.perf_counter() - clock) * 1000
            ended = time.time()
            totals.append(elapsed)
            in_stripe.append(stripe_ms_between(timing_log, began, ended) + sum(browser_stripe_ms))
            context.close()
        browser.close()
    return totals, in_stripe


def report(name: str, totals: list[float], in_stripe: list[float]) -> str:
    """One line of the results table."""
    ours = [t - s for t, s in zip(totals, in_stripe, strict=True)]
    return (
        f"{name:<5} {len(totals):>4}  {statistics.median(totals):>9.1f} "
        f"{percentile(totals, 95):>9.1f}  {statistics.median(in_stripe):>9.1f} "
        f"{percentile(in_stripe, 95):>9.1f}  {statistics.median(ours):>9.1f} "
        f"{percentile(ours, 95):>9.1f}"
    )


def main() -> None:
    """Run both benchmarks and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="REST subscribes (default 50)")
    parser.add_argument("--ui-runs", type=int, default=50, help="UI subscribes (default 50)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-subscribe-"))
    timing_log = workdir / "stripe-timing.log"
    print("Starting the app (make run path, local emulator)...", flush=True)
    # Every run registers from this one address: lift the per-address login limit.
    app = start_live_app(
        workdir, STRIPE_TIMING_LOG=str(timing_log), RATE_LIMIT_ATTEMPTS_PER_ADDRESS="1000000"
    )
    try:
        rest = bench_rest(app, args.runs, timing_log)
        ui = bench_ui(app, args.ui_runs, timing_log) if args.ui_runs else None
    finally:
        app.stop()
    print("\nSubscribe round trip against the local Stripe emulator (milliseconds)")
    print(
        f"{'path':<5} {'runs':>4}  {'median':>9} {'p95':>9}  {'stripe':>9} {'stripe95':>9}  "
        f"{'ours':>9} {'ours95':>9}"
    )
    print(report("REST", *rest))
    if ui:
        print(report("UI", *ui))
    print(
        "stripe = time inside Stripe calls (app's SDK calls; UI adds the browser's Stripe.js "
        "calls); ours = total - stripe"
    )


if __name__ == "__main__":
    main()
