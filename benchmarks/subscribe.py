"""Subscribe and cancel, click to confirmation, and how soon the pages are usable.

    python -m benchmarks.subscribe [--runs 50] [--ui-runs 30] [--label after]
        [--baseline /tmp/old --baseline-label before]

Starts the app the way `make run` does (fresh database and emulator) and measures, each
time for a new user:

- REST: POST /api/v1/subscriptions/subscribe until its answer (``--runs``);
- in Chromium (headless), ``--ui-runs`` times one person's whole path:
  - ``checkout_ready_nav``: on the plan page, click "Subscribe" until the checkout page's
    card field is usable (its inputs are in the page and enabled) and, separately, until
    its Subscribe button is enabled too (``..._button``);
  - ``checkout_ready_load``: the same, for /checkout loaded in a new tab (navigation start
    to ready; the app's files are in the browser's cache by then, as on a second visit);
  - ``ui_subscribe``: click on "Subscribe" until the page says "You're subscribed!";
  - ``dashboard_ready_load``: full load of /dashboard until "Cancel subscription" shows;
  - ``cancel_dialog``: click on "Cancel subscription" until the dialog is open;
  - ``ui_cancel``: click on "Confirm cancellation" until the result message shows.

Times are taken inside the page (``performance.now()``, the moment the DOM changed, seen by
a MutationObserver; clicks by a capturing listener), so Playwright's polling adds nothing.
The browser is launched as the end-to-end tests launch it (``devtools.liveapp.CHROMIUM_ARGS``):
without the omnibox popup Chromium 156 builds as web pages of its own for every new window,
whose loading ran beside each measured page load on this two-core machine (runs before
386693f include it).

Next to each total, ``stripe`` is the wall time inside Stripe in the same window: the union
of the app's own Stripe calls (its client writes one line per call to STRIPE_TIMING_LOG)
and the browser's requests to Stripe (Stripe.js and its API calls, from the page's resource
timing). Overlapping calls count once. ``ours`` = total - stripe. Before each measured
action the benchmark waits until the app has made no Stripe call for a while, so webhook
work from the previous step (the emulator posts about a second after a change) does not
land in the window. In the cancel window the dashboard's own invoice refresh
(GET /v1/invoices, run by its watcher after the change, not on the way to the message)
is left out.

``--baseline DIR`` also starts the app of another checkout of this repository (say
``git worktree add /tmp/old HEAD``, before a change) and measures both taking turns, run by
run, so that whatever else the machine does slows both alike. The first ``--warmup`` runs
of each are not recorded.

Prints a p50/p95 table and stores it in ``benchmarks/results/subscribe.json`` under
``--label`` (and ``--baseline-label``); other labels already in the file are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import stripe

from devtools.liveapp import CHROMIUM, CHROMIUM_ARGS, start_live_app

RESULTS = Path(__file__).resolve().parent / "results" / "subscribe.json"
# Seconds without a Stripe call by the app before an action is measured (webhooks arrive
# about one second after the change that caused them, and their handlers read Stripe).
QUIET_SECONDS = 1.4
TIMEOUT_MS = 30_000

# In the page: the first moment each condition held, and every click (ms since navigation
# start, `performance.now()`), checked whenever the DOM changes.
PAGE_PROBE = r"""
(() => {
  const marks = (window.__benchMarks = {});
  window.__benchClicks = [];
  performance.setResourceTimingBufferSize(100000);
  const text = (el) => (el.textContent || "").trim();
  const buttons = () => Array.from(document.querySelectorAll("button"));
  const statusHas = (words) =>
    Array.from(document.querySelectorAll("[role=status]")).some((e) => text(e).includes(words));
  const onCheckout = () => location.pathname.replace(/\/$/, "") === "/checkout";
  const checks = {
    card_ready: () => {
      if (!onCheckout()) return false;
      const input = document.querySelector("#card-element input");
      return !!input && !input.disabled && input.getClientRects().length > 0;
    },
    subscribe_ready: () =>
      // On the checkout page itself (while the router switches pages, the plan page's own
      // Subscribe button can still be there under the new address).
      onCheckout() && !!document.querySelector("#card-element") &&
      buttons().some((b) => text(b) === "Subscribe" && !b.disabled),
    subscribed: () => statusHas("You're subscribed!"),
    dashboard_ready: () => buttons().some((b) => text(b) === "Cancel subscription"),
    dialog_open: () => !!document.querySelector("[role=alertdialog]"),
    cancel_result: () => statusHas("You keep access until"),
  };
  const check = () => {
    const now = performance.now();
    for (const name in checks) {
      if (!(name in marks) && checks[name]()) marks[name] = now;
    }
  };
  window.__benchReset = (...names) => names.forEach((n) => delete marks[n]);
  new MutationObserver(check).observe(document, {
    subtree: true, childList: true, attributes: true, characterData: true,
  });
  document.addEventListener(
    "click",
    (e) => {
      const b = e.target.closest && e.target.closest("button");
      window.__benchClicks.push([performance.now(), b ? text(b) : ""]);
      // The click itself may change the page at once: look again.
      queueMicrotask(check);
    },
    true,
  );
})();
"""


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


Interval = tuple[float, float]  # (start, end), seconds since the epoch


def app_stripe_calls(log_path: Path) -> list[tuple[float, float, str]]:
    """Every Stripe call the app made so far: (start, end, "METHOD /path")."""
    calls = []
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            began, elapsed, method, path = line.split()[:4]
            calls.append((float(began), float(began) + float(elapsed) / 1000, f"{method} {path}"))
    return calls


def union_ms(intervals: list[Interval], start: float, end: float) -> float:
    """Milliseconds of [start, end] covered by at least one interval."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if b > start and a < end)
    total, reach = 0.0, start
    for a, b in clipped:
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total * 1000


def wait_for_quiet(log_path: Path, quiet: float = QUIET_SECONDS, limit: float = 15.0) -> None:
    """Wait until the app has made no Stripe call for `quiet` seconds (bounded)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        calls = app_stripe_calls(log_path)
        last = max((end for _, end, _ in calls), default=0.0)
        if time.time() - last >= quiet:
            return
        time.sleep(0.1)  # polling interval of a bounded wait


@dataclass
class Target:
    """A running app to measure: the code under test, or a baseline checkout of it."""

    label: str
    url: str
    stripe_api_base: str
    timing_log: Path
    stop: Callable[[], None]


def start_target(label: str, workdir: Path) -> Target:
    """This checkout's app, started the way `make run` does."""
    timing_log = workdir / "stripe-timing.log"
    # Every run registers from this one address: lift the per-address login limit.
    app = start_live_app(
        workdir, STRIPE_TIMING_LOG=str(timing_log), RATE_LIMIT_ATTEMPTS_PER_ADDRESS="1000000"
    )
    return Target(label, app.url, app.stripe_api_base, timing_log, app.stop)


# Run in another checkout (`--baseline`): starts its app with its own code, says where it
# is, and stops it when our end of stdin closes.
_SERVE_BASELINE = """
import json, sys
from pathlib import Path
from devtools.liveapp import start_live_app
app = start_live_app(
    Path(sys.argv[1]), STRIPE_TIMING_LOG=sys.argv[2], RATE_LIMIT_ATTEMPTS_PER_ADDRESS="1000000"
)
print(json.dumps({"url": app.url, "stripe_api_base": app.stripe_api_base}), flush=True)
try:
    sys.stdin.read()
finally:
    app.stop()
"""


def start_baseline(label: str, checkout: Path, workdir: Path) -> Target:
    """The app of another checkout of this repository (e.g. `git worktree add`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    timing_log = workdir / "stripe-timing.log"
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE_BASELINE, str(workdir), str(timing_log)],
        cwd=checkout,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the baseline app in {checkout} did not start")
    where = json.loads(line)

    def stop() -> None:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=60)

    return Target(label, where["url"], where["stripe_api_base"], timing_log, stop)


def new_user(app: Target) -> str:
    """Register and log in a fresh user through the API; returns the bearer token."""
    email = f"bench-{uuid.uuid4().hex[:12]}@example.com"
    body = {"email": email, "password": "bench-password-1"}
    httpx.post(f"{app.url}/api/v1/auth/register", json=body, timeout=30).raise_for_status()
    response = httpx.post(f"{app.url}/api/v1/auth/login", json=body, timeout=30)
    response.raise_for_status()
    return response.json()["access_token"]


def rest_subscribe(app: Target) -> dict:
    """One REST subscribe by a new user; its total and Stripe share."""
    sdk = stripe.StripeClient("sk_test_bench", base_addresses={"api": app.stripe_api_base})
    token = new_user(app)
    pm = sdk.v1.payment_methods.create(params={"type": "card", "card": {"token": "tok_visa"}})
    wait_for_quiet(app.timing_log)
    began, clock = time.time(), time.perf_counter()
    response = httpx.post(
        f"{app.url}/api/v1/subscriptions/subscribe",
        json={"payment_method_id": pm.id},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    elapsed = (time.perf_counter() - clock) * 1000
    ended = time.time()
    if response.status_code != 200 or response.json()["status"] != "active":
        raise RuntimeError(f"subscribe failed: {response.status_code} {response.text}")
    calls = [(a, b) for a, b, _ in app_stripe_calls(app.timing_log)]
    return {"total": elapsed, "stripe": union_ms(calls, began, ended)}


class Page:
    """One Chromium page with the probe, and the clock arithmetic around it."""

    def __init__(self, page, app: Target):
        self.page, self.app = page, app

    def _origin(self) -> float:
        """The page's navigation start, in seconds since the epoch."""
        return self.page.evaluate("performance.timeOrigin") / 1000

    def wait_mark(self, name: str) -> float:
        """Wait until the probe has seen `name`; ms since navigation start."""
        handle = self.page.wait_for_function(
            f"() => window.__benchMarks && window.__benchMarks[{json.dumps(name)}]",
            timeout=TIMEOUT_MS,
            polling=50,
        )
        return float(handle.json_value())

    def last_click(self, label: str) -> float:
        clicks = self.page.evaluate("window.__benchClicks")
        return max(at for at, text in clicks if text == label)

    def browser_stripe(self) -> list[Interval]:
        """The browser's requests to Stripe (script and API), as epoch intervals."""
        origin = self._origin()
        entries = self.page.evaluate(
            "(base) => performance.getEntriesByType('resource')"
            ".filter(e => e.name.startsWith(base))"
            ".map(e => [e.startTime, e.responseEnd || (e.startTime + e.duration)])",
            self.app.stripe_api_base,
        )
        return [(origin + a / 1000, origin + b / 1000) for a, b in entries]

    def sample(self, start_ms: float, end_ms: float, skip: tuple[str, ...] = ()) -> dict:
        """Total, Stripe share, and the browser's and the app's parts of it."""
        origin = self._origin()
        start, end = origin + start_ms / 1000, origin + end_ms / 1000
        browser = self.browser_stripe()
        app = [
            (a, b)
            for a, b, what in app_stripe_calls(self.app.timing_log)
            if not (skip and what.startswith(skip))
        ]
        return {
            "total": end_ms - start_ms,
            "stripe": union_ms(browser + app, start, end),
            "browser_stripe": union_ms(browser, start, end),
            "app_stripe": union_ms(app, start, end),
        }


UI_MEASURES = (
    "checkout_ready_nav",
    "checkout_ready_nav_button",
    "checkout_ready_load",
    "checkout_ready_load_button",
    "ui_subscribe",
    "dashboard_ready_load",
    "cancel_dialog",
    "ui_cancel",
)


def ui_path(browser, app: Target) -> dict[str, dict]:
    """One person's path in a new browser context; a sample per measure."""
    from playwright.sync_api import expect

    taken: dict[str, dict] = {}
    log = app.timing_log
    token = new_user(app)
    context = browser.new_context(base_url=app.url)
    context.add_init_script(PAGE_PROBE)
    context.add_cookies([{"name": "sa_session", "value": token, "url": app.url}])
    try:
        page = context.new_page()
        probe = Page(page, app)

        # The plan page, then its Subscribe button: in-app navigation to checkout.
        page.goto("/plan")
        expect(page.get_by_role("button", name="Subscribe with Stripe Checkout")).to_be_visible()
        wait_for_quiet(log)
        page.get_by_role("button", name="Subscribe", exact=True).click()
        clicked = probe.last_click("Subscribe")
        card, button = probe.wait_mark("card_ready"), probe.wait_mark("subscribe_ready")
        taken["checkout_ready_nav"] = probe.sample(clicked, card)
        taken["checkout_ready_nav_button"] = probe.sample(clicked, button)
        page.close()

        # A new tab (a new Reflex state) loading the checkout page.
        wait_for_quiet(log)
        page = context.new_page()
        probe = Page(page, app)
        page.goto("/checkout")
        card, button = probe.wait_mark("card_ready"), probe.wait_mark("subscribe_ready")
        taken["checkout_ready_load"] = probe.sample(0.0, card)
        taken["checkout_ready_load_button"] = probe.sample(0.0, button)

        # Subscribe.
        group = page.get_by_role("group", name="Card details")
        for placeholder, value in [
            ("number", "4242424242424242"),
            ("exp_month", "12"),
            ("exp_year", "34"),
            ("cvc", "123"),
            ("postal_code", "10001"),
        ]:
            group.get_by_placeholder(placeholder).fill(value)
        wait_for_quiet(log)
        page.get_by_role("button", name="Subscribe", exact=True).click()
        clicked = probe.last_click("Subscribe")
        taken["ui_subscribe"] = probe.sample(clicked, probe.wait_mark("subscribed"))

        # The dashboard (a full load in the same tab), and cancelling at period end.
        wait_for_quiet(log)
        page.goto("/dashboard")
        taken["dashboard_ready_load"] = probe.sample(0.0, probe.wait_mark("dashboard_ready"))
        expect(page.get_by_role("button", name="Cancel subscription")).to_be_enabled()
        wait_for_quiet(log)
        page.get_by_role("button", name="Cancel subscription").click()
        clicked = probe.last_click("Cancel subscription")
        taken["cancel_dialog"] = probe.sample(clicked, probe.wait_mark("dialog_open"))
        confirm = page.get_by_role("alertdialog").get_by_role("button", name="Confirm cancellation")
        expect(confirm).to_be_enabled()
        wait_for_quiet(log)
        confirm.click()
        clicked = probe.last_click("Confirm cancellation")
        # The dashboard's watcher re-reads the invoices after the change: not on the way.
        taken["ui_cancel"] = probe.sample(
            clicked, probe.wait_mark("cancel_result"), skip=("GET /v1/invoices",)
        )
    finally:
        context.close()
    return taken


def run_all(
    targets: list[Target], rest_runs: int, ui_runs: int, warmup: int
) -> dict[str, dict[str, list[dict]]]:
    """Every measure for every target, taking turns run by run (after `warmup` runs each).

    Taking turns (the first target of a round alternates) means whatever else the machine
    is doing slows every target alike.
    """
    from playwright.sync_api import sync_playwright

    samples: dict[str, dict[str, list[dict]]] = {t.label: {} for t in targets}
    for run in range(warmup + rest_runs):
        for target in targets if run % 2 == 0 else targets[::-1]:
            taken = rest_subscribe(target)
            if run >= warmup:
                samples[target.label].setdefault("rest_subscribe", []).append(taken)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for run in range(warmup + ui_runs):
                for target in targets if run % 2 == 0 else targets[::-1]:
                    taken_ui = ui_path(browser, target)
                    if run < warmup:
                        continue
                    for name, sample in taken_ui.items():
                        samples[target.label].setdefault(name, []).append(sample)
                    print(
                        f"  {target.label} run {run - warmup + 1}/{ui_runs}: subscribe "
                        f"{taken_ui['ui_subscribe']['total']:.0f} ms, cancel "
                        f"{taken_ui['ui_cancel']['total']:.0f} ms, checkout ready "
                        f"{taken_ui['checkout_ready_nav_button']['total']:.0f} ms",
                        flush=True,
                    )
        finally:
            browser.close()
    return samples


def summarize(samples: list[dict]) -> dict:
    """p50/p95 of total, Stripe share and ours (milliseconds), and the samples."""
    totals = [s["total"] for s in samples]
    in_stripe = [s["stripe"] for s in samples]
    ours = [s["total"] - s["stripe"] for s in samples]

    def pair(values: list[float]) -> dict:
        return {"p50": round(statistics.median(values), 1), "p95": round(percentile(values, 95), 1)}

    summary = {
        "runs": len(samples),
        "total_ms": pair(totals),
        "stripe_ms": pair(in_stripe),
        "ours_ms": pair(ours),
    }
    for part in ("browser_stripe", "app_stripe"):
        if samples and part in samples[0]:
            summary[f"{part}_ms"] = pair([s[part] for s in samples])
    summary["samples"] = [{k: round(v, 1) for k, v in s.items()} for s in samples]
    return summary


def report_line(name: str, summary: dict) -> str:
    """One line of the results table."""
    t, s, o = summary["total_ms"], summary["stripe_ms"], summary["ours_ms"]
    return (
        f"{name:<28} {summary['runs']:>4}  {t['p50']:>7.1f} {t['p95']:>7.1f}  "
        f"{s['p50']:>7.1f} {s['p95']:>7.1f}  {o['p50']:>7.1f} {o['p95']:>7.1f}"
    )


def _git_revision(where: Path | None = None) -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=where,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=where
        )
        return head + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    """Run the benchmarks, print the table and store it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="REST subscribes (default 50)")
    parser.add_argument("--ui-runs", type=int, default=30, help="UI paths (default 30)")
    parser.add_argument("--warmup", type=int, default=2, help="unrecorded runs of each first")
    parser.add_argument("--label", default="after", help="key of this code in the results")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this repository (e.g. `git worktree add /tmp/old HEAD`), "
        "measured taking turns with this one",
    )
    parser.add_argument("--baseline-label", default="before", help="its key in the results")
    parser.add_argument("--note", default="", help="what this code is (stored with it)")
    parser.add_argument("--baseline-note", default="", help="what the baseline is")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results file (JSON)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    # Started in the background by a shell, we may have inherited an ignored SIGINT, and the
    # apps' launchers with it: they stop on SIGINT (Ctrl-C), so give them the default back.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    workdir = Path(tempfile.mkdtemp(prefix="bench-subscribe-"))
    print("Starting the app (make run path, local emulator)...", flush=True)
    targets = [start_target(args.label, workdir / "current")]
    try:
        if args.baseline:
            print(f"Starting the baseline app from {args.baseline}...", flush=True)
            baseline = start_baseline(args.baseline_label, args.baseline, workdir / "baseline")
            targets.insert(0, baseline)
        samples = run_all(targets, args.runs, args.ui_runs, args.warmup)
    finally:
        for target in targets:
            target.stop()

    results = {
        label: {
            name: summarize(taken[name])
            for name in ("rest_subscribe", *UI_MEASURES)
            if name in taken
        }
        for label, taken in samples.items()
    }
    print("\nAgainst the local Stripe emulator (milliseconds; p50 and p95)")
    for label, measures in results.items():
        print(
            f"\n{label:<28} {'runs':>4}  {'total':>7} {'p95':>7}  {'stripe':>7} {'p95':>7}  "
            f"{'ours':>7} {'p95':>7}"
        )
        for name, summary in measures.items():
            print(report_line(name, summary))
    print(
        "\nstripe = wall time inside Stripe (the app's SDK calls and the browser's Stripe.js "
        "requests, overlaps once); ours = total - stripe"
    )
    if args.no_save:
        return
    stored = json.loads(args.output.read_text()) if args.output.exists() else {}
    stored.setdefault("benchmark", "subscribe")
    stored.setdefault("runs", {})
    common = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "interleaved_with": [t.label for t in targets if len(targets) > 1],
    }
    for target in targets:
        revision = _git_revision(args.baseline if target.label == args.baseline_label else None)
        baseline = target.label == args.baseline_label and len(targets) > 1
        stored["runs"][target.label] = {
            **common,
            "revision": revision,
            "note": args.baseline_note if baseline else args.note,
            "results": results[target.label],
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(stored, indent=2) + "\n")
    print(f"Stored under {', '.join(repr(t.label) for t in targets)} in {args.output}")


if __name__ == "__main__":
    main()
