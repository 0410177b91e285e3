"""Webhook intake: our route against a bare signature check, and the processor's lag.

    python -m benchmarks.webhooks [--events 2000] [--workers 8] [--rate 0] [--postgres URL]

For SQLite (a temporary file) and, when given (`--postgres URL` or TEST_DATABASE_URL),
PostgreSQL (a fresh schema, dropped at the end), in one run:

1. the real route `POST /api/v1/webhooks/stripe` (verify the signature, store the event
   encrypted, answer 200) served by uvicorn on a loopback port, with the background
   processor running in the same event loop as it does in the app;
2. a bare endpoint on the same stack that only verifies the signature;
3. the rate of accepted events of each and their ratio;
4. p50/p99 latency of the 2xx answer of each, as the client sees it;
5. the lag from receipt to the subscription row updated, per event `processed_at -
   received_at` from the stripe_event table once everything has been processed, and the
   processor's own rate while the events arrive and afterwards (draining what is left).

The events are signed `customer.subscription.updated` events (unique ids, increasing
`created`) flipping seeded subscriptions between active and past_due, so every one of them
is applied. They are fired by `--workers` concurrent keep-alive connections from a separate
process, so the load generator does not share the servers' GIL: as fast as they are answered
(a burst), or paced at `--rate` events per second to see the lag at a steady load.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import http.client
import itertools
import json
import multiprocessing
import os
import secrets
import socket
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# At module level because FastAPI resolves the bare endpoint's (string) annotations here.
from fastapi import Request

from benchmarks.subscribe import percentile

ROUTE_PATH = "/api/v1/webhooks/stripe"
BARE_PATH = "/bare/webhook"
WARMUP_EVENTS = 50
PRICE_ID = "price_bench_monthly"
# Bounds: no step of a run may hang the benchmark.
REQUEST_TIMEOUT_SECONDS = 30
DRAIN_TIMEOUT_SECONDS = 60
SERVER_START_TIMEOUT_SECONDS = 15


# --------------------------------------------------------------------------
# Load generator (runs in a child process)
# --------------------------------------------------------------------------


@dataclass
class FireResult:
    """What the client saw: per-request latency (seconds) and status, and the wall time."""

    latencies: list[float]
    statuses: list[int]
    elapsed: float


def fire(
    port: int, path: str, requests: list[tuple[bytes, str]], workers: int, rate: float = 0
) -> FireResult:
    """POST every (body, Stripe-Signature) to 127.0.0.1:port with `workers` connections.

    Plain http.client keep-alive connections: the cheapest client the stdlib has, so the
    figures are about the server. Requests are handed out in order (a shared counter); with
    `rate` > 0, request i is not sent before `i / rate` seconds from the start.
    """
    latencies = [0.0] * len(requests)
    statuses = [0] * len(requests)
    counter = itertools.count()  # next() on it is atomic under the GIL

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            while (index := next(counter)) < len(requests):
                body, signature = requests[index]
                if rate > 0:
                    delay = begin + index / rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                started = time.perf_counter()
                try:
                    connection.request(
                        "POST",
                        path,
                        body=body,
                        headers={
                            "Content-Type": "application/json; charset=utf-8",
                            "Stripe-Signature": signature,
                        },
                    )
                    response = connection.getresponse()
                    response.read()
                    statuses[index] = response.status
                except (OSError, http.client.HTTPException):
                    statuses[index] = -1
                    connection.close()  # reconnects on the next request
                latencies[index] = time.perf_counter() - started
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return FireResult(latencies, statuses, time.perf_counter() - begin)


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SeededUser:
    """A user with a Stripe customer and an active subscription in our database."""

    user_id: int
    customer_id: str
    subscription_id: str


def subscription_object(user: SeededUser, status: str, start: int) -> dict:
    """A subscription as today's API sends it in an event (the fields real events carry)."""
    period_end = start + 30 * 86400
    return {
        "id": user.subscription_id,
        "object": "subscription",
        "application": None,
        "billing_cycle_anchor": start,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": start,
        "currency": "usd",
        "customer": user.customer_id,
        "default_payment_method": "pm_" + user.subscription_id[4:],
        "description": None,
        "discounts": [],
        "ended_at": None,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_" + user.subscription_id[4:],
                    "object": "subscription_item",
                    "created": start,
                    "current_period_end": period_end,
                    "current_period_start": start,
                    "metadata": {},
                    "price": {
                        "id": PRICE_ID,
                        "object": "price",
                        "active": True,
                        "currency": "usd",
                        "lookup_key": "subscription_app_default_monthly",
                        "product": "prod_bench",
                        "recurring": {
                            "interval": "month",
                            "interval_count": 1,
                            "usage_type": "licensed",
                        },
                        "type": "recurring",
                        "unit_amount": 1200,
                    },
                    "quantity": 1,
                    "subscription": user.subscription_id,
                }
            ],
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={user.subscription_id}",
        },
        "latest_invoice": "in_" + uuid.uuid4().hex[:24],
        "livemode": False,
        "metadata": {},
        "start_date": start,
        "status": status,
        "trial_end": None,
        "trial_start": None,
    }


@dataclass
class EventBatch:
    """Signed events ready to send, and the status each user's row must end with."""

    requests: list[tuple[bytes, str]]
    ids: list[str]
    final_status: dict[int, str] = field(default_factory=dict)


def make_events(
    users: list[SeededUser], count: int, prefix: str, first_created: int, secret: str
) -> EventBatch:
    """`count` signed customer.subscription.updated events, round-robin over `users`.

    Each event flips its subscription between active and past_due, and `created` increases
    by one second per event, so the processor applies every one of them in turn.
    """
    import stripe

    from subscription_app.billing.webhooks import sign

    batch = EventBatch([], [])
    status = {user.user_id: "active" for user in users}
    for index in range(count):
        user = users[index % len(users)]
        previous = status[user.user_id]
        status[user.user_id] = "past_due" if previous == "active" else "active"
        event_id = f"evt_{prefix}_{index:06d}_{uuid.uuid4().hex[:8]}"
        event = {
            "id": event_id,
            "object": "event",
            "api_version": stripe.api_version,
            "created": first_created + index,
            "data": {
                "object": subscription_object(user, status[user.user_id], first_created),
                "previous_attributes": {"status": previous},
            },
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": "customer.subscription.updated",
        }
        payload = json.dumps(event, indent=2, sort_keys=True)  # Stripe's layout
        batch.requests.append((payload.encode(), sign(payload, secret)))
        batch.ids.append(event_id)
    batch.final_status = status
    return batch


# --------------------------------------------------------------------------
# Database and environment
# --------------------------------------------------------------------------


@contextlib.contextmanager
def database(backend: str, postgres_url: str | None) -> Iterator[str]:
    """A fresh database URL: a temporary SQLite file, or a new PostgreSQL schema."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as workdir:
            yield f"sqlite:///{Path(workdir) / 'bench.db'}"
        return
    from devtools.pgschema import fresh_schema

    with fresh_schema(postgres_url, prefix="bench") as url:
        yield url


def configure(database_url: str) -> str:
    """Point the app's settings and engine at `database_url` with fresh secrets.

    Returns the webhook signing secret.
    """
    from subscription_app import crypto, db
    from subscription_app.settings import get_settings

    webhook_secret = "whsec_bench_" + secrets.token_hex(16)
    os.environ.update(
        APP_ENV="development",
        APP_SECRET_KEY=secrets.token_urlsafe(48),
        APP_ENCRYPTION_KEYS=crypto.generate_key(),
        DATABASE_URL=database_url,
        STRIPE_WEBHOOK_SECRET=webhook_secret,
    )
    # Stripe keys from the shell would make the settings demand the whole Stripe set; the
    # benchmark never calls Stripe.
    for name in ("STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY", "STRIPE_PRICE_ID"):
        os.environ.pop(name, None)
    get_settings.cache_clear()
    db.get_engine.cache_clear()  # the previous database's engine was disposed after its run
    return webhook_secret


def seed(count: int, observed_at: datetime) -> list[SeededUser]:
    """`count` users, each with a customer and an active subscription, via the repository."""
    from subscription_app.billing import repository
    from subscription_app.billing.reader import read_subscription
    from subscription_app.db import session_scope
    from subscription_app.models import User

    users = []
    start = int(observed_at.timestamp())
    with session_scope() as session:
        for index in range(count):
            # No password hash: nobody logs in, and argon2 would dominate the seeding time.
            email = f"bench-{index}-{uuid.uuid4().hex[:8]}@example.com"
            user = User(email=email, password_hash="!")
            session.add(user)
            session.flush()
            seeded = SeededUser(
                user_id=user.id,
                customer_id="cus_" + uuid.uuid4().hex[:14],
                subscription_id="sub_" + uuid.uuid4().hex[:14],
            )
            repository.save_customer(session, seeded.user_id, seeded.customer_id)
            repository.apply_snapshot(
                session,
                user_id=seeded.user_id,
                snapshot=read_subscription(subscription_object(seeded, "active", start)),
                observed_at=observed_at,
            )
            users.append(seeded)
    return users


# --------------------------------------------------------------------------
# Servers (uvicorn in one background event loop)
# --------------------------------------------------------------------------


def create_bare_app():
    """The same stack as the route (FastAPI, uvicorn) doing nothing but `verify`."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from subscription_app.billing.webhooks import InvalidWebhook, verify

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.post(BARE_PATH)
    async def bare_webhook(request: Request) -> JSONResponse:
        try:
            verify(await request.body(), request.headers.get("stripe-signature"))
        except InvalidWebhook as exc:
            return JSONResponse({"detail": exc.message}, status_code=400)
        return JSONResponse({"received": True})

    return app


class ServerLoop:
    """One event loop in a background thread that hosts the servers and the processor.

    A single loop for the whole run: the route wakes the processor through an asyncio.Event
    (`changes.processor_wakeup()`), which binds to the first loop that waits on it.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def start_server(self, app):
        """Serve `app` on a free loopback port; returns (server, port, future)."""
        import uvicorn

        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on connections whose
        # socket says so, and without it uvicorn's separate header and body writes meet
        # delayed ACKs (40 ms per keep-alive request).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # bound before serving: no race for the port
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        future = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), self.loop)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        while not server.started:
            if future.done():
                future.result()  # raises what stopped it
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return server, sock.getsockname()[1], future

    def stop_server(self, server, future) -> None:
        """Ask uvicorn to exit and wait for it."""
        server.should_exit = True
        future.result(timeout=SERVER_START_TIMEOUT_SECONDS)

    def start_processor(self) -> tuple[asyncio.Event, concurrent.futures.Future]:
        """Start `run_processor` in the loop, as the app's lifespan task does."""
        from subscription_app.billing.processor import run_processor

        stop = asyncio.Event()
        return stop, asyncio.run_coroutine_threadsafe(run_processor(stop), self.loop)

    def stop_processor(self, stop: asyncio.Event, future: concurrent.futures.Future) -> None:
        """Stop the processor (it finishes its current pass first)."""
        from subscription_app import changes

        def _stop() -> None:
            stop.set()
            changes.processor_wakeup().set()  # do not wait for its idle poll

        self.loop.call_soon_threadsafe(_stop)
        future.result(timeout=DRAIN_TIMEOUT_SECONDS)

    def close(self) -> None:
        """Stop the loop, the threads it ran blocking work in, and its own thread."""
        shutdown = self.loop.shutdown_default_executor()
        asyncio.run_coroutine_threadsafe(shutdown, self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


# --------------------------------------------------------------------------
# One database
# --------------------------------------------------------------------------


@dataclass
class TargetResult:
    """Figures of one endpoint."""

    events: int
    accepted: int
    elapsed: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        """Accepted events per second over the whole firing."""
        return self.accepted / self.elapsed if self.elapsed else 0.0


@dataclass
class DatabaseResult:
    """Everything measured on one database."""

    backend: str
    route: TargetResult
    bare: TargetResult
    lag_ms: list[float]
    applied: int
    processed_during: int  # processed before the last answer of the route
    drain_seconds: float
    rows_correct: int
    rows_total: int
    body_bytes: int


def _target_result(result: FireResult) -> TargetResult:
    pairs = zip(result.latencies, result.statuses, strict=True)
    accepted = [latency for latency, status in pairs if status == 200]
    return TargetResult(
        events=len(result.statuses),
        accepted=len(accepted),
        elapsed=result.elapsed,
        latencies_ms=[lat * 1000 for lat in accepted],
    )


def wait_until_processed(event_ids: list[str]) -> tuple[int, float]:
    """Wait (bounded) until none of `event_ids` is pending; returns (pending left, seconds)."""
    from sqlalchemy import func
    from sqlmodel import Session, col, select

    from subscription_app import db
    from subscription_app.models import EventStatus, StripeEvent

    started = time.monotonic()
    query = select(func.count()).where(
        col(StripeEvent.event_id).in_(event_ids), StripeEvent.status == EventStatus.PENDING.value
    )
    while True:
        with Session(db.get_engine()) as session:
            pending = session.exec(query).one()
        waited = time.monotonic() - started
        if pending == 0 or waited > DRAIN_TIMEOUT_SECONDS:
            return pending, waited
        time.sleep(0.05)


def read_lag(event_ids: list[str], last_answer: datetime) -> tuple[list[float], int, int]:
    """Lag (ms) of each processed event, how many were applied (done), and how many had
    been processed by `last_answer`."""
    from sqlmodel import Session, col, select

    from subscription_app import db
    from subscription_app.models import EventStatus, StripeEvent

    with Session(db.get_engine()) as session:
        rows = session.exec(
            select(StripeEvent.received_at, StripeEvent.processed_at, StripeEvent.status).where(
                col(StripeEvent.event_id).in_(event_ids)
            )
        ).all()
    lags = [
        (processed - received).total_seconds() * 1000
        for received, processed, _ in rows
        if processed is not None
    ]
    applied = sum(1 for *_, status in rows if status == EventStatus.DONE.value)
    during = sum(1 for _, done_at, _ in rows if done_at is not None and done_at <= last_answer)
    return lags, applied, during


def count_correct_rows(final_status: dict[int, str]) -> int:
    """How many subscription rows hold the status of their user's last event."""
    from sqlmodel import Session, select

    from subscription_app import db
    from subscription_app.models import Subscription

    with Session(db.get_engine()) as session:
        rows = session.exec(select(Subscription.user_id, Subscription.status)).all()
    return sum(1 for user_id, status in rows if final_status.get(user_id) == status)


def bench_database(
    backend: str,
    database_url: str,
    args: argparse.Namespace,
    servers: ServerLoop,
    client_pool: concurrent.futures.ProcessPoolExecutor,
) -> DatabaseResult:
    """Migrate and seed `database_url`, fire at both endpoints, measure the processor lag."""
    from alembic import command
    from subscription_app.api.app import create_api
    from subscription_app.migrate import alembic_config

    secret = configure(database_url)
    migrations = alembic_config(database_url)
    migrations.attributes["configure_logger"] = False  # keep alembic's INFO lines out
    command.upgrade(migrations, "head")
    now = int(time.time())
    # `created` runs one second per event up to about now (Stripe never sends future events).
    first_created = now - args.events - WARMUP_EVENTS - 60
    users = seed(args.users, datetime.fromtimestamp(first_created - 3600, tz=UTC))

    warm_route = make_events(users, WARMUP_EVENTS, "warm", first_created, secret)
    batch = make_events(users, args.events, "bench", first_created + WARMUP_EVENTS, secret)
    bare_warm = make_events(users, WARMUP_EVENTS, "barewarm", first_created, secret)
    bare_batch = make_events(users, args.events, "bare", first_created, secret)

    route_server, route_port, route_future = servers.start_server(create_api())
    bare_server, bare_port, bare_future = servers.start_server(create_bare_app())
    stop, processor = servers.start_processor()
    try:

        def run(port: int, path: str, requests: list, rate: float = 0) -> FireResult:
            job = client_pool.submit(fire, port, path, requests, args.workers, rate)
            return job.result()

        # Bare first, while the processor idles; then the route with the processor busy.
        run(bare_port, BARE_PATH, bare_warm.requests)
        bare = _target_result(run(bare_port, BARE_PATH, bare_batch.requests, args.rate))
        run(route_port, ROUTE_PATH, warm_route.requests)
        wait_until_processed(warm_route.ids)
        route = _target_result(run(route_port, ROUTE_PATH, batch.requests, args.rate))
        last_answer = datetime.now(UTC)
        pending, drain_seconds = wait_until_processed(batch.ids)
        if pending:
            print(f"  warning: {pending} events still pending after {DRAIN_TIMEOUT_SECONDS}s")
    finally:
        servers.stop_processor(stop, processor)
        servers.stop_server(route_server, route_future)
        servers.stop_server(bare_server, bare_future)

    lags, applied, processed_during = read_lag(batch.ids, last_answer)
    body_bytes = int(statistics.mean(len(body) for body, _ in batch.requests))
    result = DatabaseResult(
        backend=backend,
        route=route,
        bare=bare,
        lag_ms=lags,
        applied=applied,
        processed_during=processed_during,
        drain_seconds=drain_seconds,
        rows_correct=count_correct_rows(batch.final_status),
        rows_total=len(users),
        body_bytes=body_bytes,
    )
    from subscription_app import db

    db.get_engine().dispose()
    return result


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _ms(values: list[float], pct: float) -> str:
    return f"{percentile(values, pct):.1f}" if values else "-"


def report(result: DatabaseResult, workers: int) -> str:
    """The table of one database."""
    route, bare = result.route, result.bare
    ratio = route.rate / bare.rate if bare.rate else 0.0
    lines = [
        f"\n{result.backend}: {route.events} signed events per target, {workers} concurrent "
        f"connections, {result.body_bytes} B per event, {result.rows_total} subscriptions",
        f"  {'target':<28} {'accepted':>9} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for name, target in (("route (verify + store)", route), ("bare (verify only)", bare)):
        lines.append(
            f"  {name:<28} {target.accepted:>4}/{target.events:<4} {target.rate:>9.0f} "
            f"{_ms(target.latencies_ms, 50):>8} {_ms(target.latencies_ms, 99):>8}"
        )
    lines.append(f"  route/bare rate ratio: {ratio:.2f}")
    lines.append(
        f"  lag receipt -> row updated (processor): p50 {_ms(result.lag_ms, 50)} ms, "
        f"p99 {_ms(result.lag_ms, 99)} ms, max {max(result.lag_ms, default=0):.1f} ms"
    )
    after = len(result.lag_ms) - result.processed_during
    during_rate = result.processed_during / route.elapsed if route.elapsed else 0.0
    after_rate = after / result.drain_seconds if after and result.drain_seconds else 0.0
    lines.append(
        f"  processor: {during_rate:.0f} events/s while events arrived, "
        f"{after_rate:.0f} events/s draining the remaining {after} "
        f"({result.drain_seconds:.1f} s); {result.applied}/{route.accepted} applied, "
        f"rows correct {result.rows_correct}/{result.rows_total}"
    )
    return "\n".join(lines)


def summary(results: list[DatabaseResult]) -> str:
    """One line per database, side by side."""
    lines = [
        "\nSummary (events/s accepted; latency and lag in ms)",
        f"  {'database':<11} {'route/s':>8} {'bare/s':>8} {'ratio':>6} "
        f"{'route p50/p99':>14} {'bare p50/p99':>13} {'lag p50/p99/max':>18}",
    ]
    for r in results:
        ratio = r.route.rate / r.bare.rate if r.bare.rate else 0.0
        route_lat = f"{_ms(r.route.latencies_ms, 50)}/{_ms(r.route.latencies_ms, 99)}"
        bare_lat = f"{_ms(r.bare.latencies_ms, 50)}/{_ms(r.bare.latencies_ms, 99)}"
        lag = f"{_ms(r.lag_ms, 50)}/{_ms(r.lag_ms, 99)}/{max(r.lag_ms, default=0):.0f}"
        lines.append(
            f"  {r.backend:<11} {r.route.rate:>8.0f} {r.bare.rate:>8.0f} {ratio:>6.2f} "
            f"{route_lat:>14} {bare_lat:>13} {lag:>18}"
        )
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark on SQLite and, when given, PostgreSQL; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events per target (2000)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent connections (8)")
    parser.add_argument("--users", type=int, default=200, help="seeded subscriptions (200)")
    parser.add_argument(
        "--rate", type=float, default=0, help="events/s per target; 0 = as fast as answered"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TEST_DATABASE_URL"),
        help="PostgreSQL URL (default: $TEST_DATABASE_URL); a fresh schema is used and dropped",
    )
    args = parser.parse_args()
    for name in ("events", "workers", "users"):
        if not 1 <= getattr(args, name) <= 100_000:
            parser.error(f"--{name} must be between 1 and 100000")
    if args.rate < 0 or (args.rate and args.events / args.rate > 600):
        parser.error("--rate must be >= 0 and fire the events within 10 minutes")

    import logging

    from subscription_app.settings import Settings

    logging.basicConfig(level=logging.WARNING)
    Settings.model_config["env_file"] = None  # only our environment, never a local .env

    backends = ["sqlite"] + (["postgresql"] if args.postgres else [])
    results = []
    servers = ServerLoop()
    # One client process for the whole run (spawned: no copy of our threads or engines).
    client_pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn")
    )
    try:
        client_pool.submit(int).result()  # start it now, not during the first measurement
        for backend in backends:
            print(f"Benchmarking {backend}...", flush=True)
            with database(backend, args.postgres) as url:
                result = bench_database(backend, url, args, servers, client_pool)
            print(report(result, args.workers), flush=True)
            results.append(result)
    finally:
        client_pool.shutdown()
        servers.close()
    print(summary(results))


if __name__ == "__main__":
    main()
