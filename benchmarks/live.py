"""Live dashboards (issue 12): what open, idle dashboards cost the database, and how fast a
change reaches dashboards served by other backend workers.

    python -m benchmarks.live [--clients 500] [--users 50] [--idle-seconds 30]
        [--changes 25] [--label after] [--app-root DIR] [--postgres URL] [--redis URL]
        [--web-dir DIR] [--output benchmarks/results/live.json]

Needs a PostgreSQL server where the URL's role may create databases (--postgres, else
TEST_DATABASE_URL) and `redis-server` on PATH (or --redis URL).

1. Isolation. The app gets a database of its own on that server (CREATE DATABASE, dropped at
   the end), with a fresh schema in it (`devtools.pgschema.fresh_schema`), so the server's
   per-database statistics count this app's queries only, even while other programs use
   the server. It also gets a Redis server of its own (`redis-server` on a free port,
   stopped at the end): the change feed's pub/sub channel is server-wide, and another app
   publishing user ids on the shared Redis would wake these dashboards. With --redis the
   given Redis is used (flushed first) instead.
2. The app in its production shape, started as `make run` does
   (`devtools.liveapp.start_live_app`: emulator, migrations, `reflex run --env prod`, several
   granian workers on one port, sharing state through Redis). --app-root runs another
   checkout of the app (say the code before a change; it needs .venv/.tools reachable).
3. --users people registered, logged in and subscribed through the app's REST API
   (register, login, a `tok_visa` card made at the emulator, subscribe); then the
   emulator's webhooks about them are left to be processed.
4. Idle database load with no dashboard open (the app's own background tasks: webhook
   processor, email outbox), then with --clients dashboards open (--clients / --users tabs
   per person). Each tab is a simulated browser tab: a python-socketio client that speaks
   Reflex's protocol as the compiled frontend does: websocket to `/_event` with a new tab
   token, the person's session cookie in the handshake, the `hydrate_and_load` event in the
   CONNECT packet with router data for /dashboard. The backend then runs the page's on_load
   (login guard, `DashboardState.load`, which starts `DashboardState.watch`). A tab counts as
   open when it has received the hydrated state with the subscription "active"; the kernel
   spreads the connections over the workers. After --settle-seconds, --idle-seconds of
   nothing happening are measured, per second:
   - the app's own database calls, counted inside its processes without changing its code:
     a `sitecustomize` module put on the app's PYTHONPATH hooks SQLAlchemy's engine and
     pool events in every process (SQL statements, transactions ended by commit or
     rollback, connection checkouts, each of which costs a `SELECT 1` ping here);
   - the server's view of the app's database (pg_stat_database): transactions
     (xact_commit + xact_rollback) and rows read (tup_returned + tup_fetched). It counts
     every connection to that database, so the app's figures above are the ones to trust
     when something else connects too. PostgreSQL publishes a backend's counts up to
     seconds late, so a window's edges move these by a little;
   - Redis commands, and the CPU time of the app's processes and of the PostgreSQL
     backends serving its database.
   "Per dashboard" is (open - none) / tabs.
5. Change latency, two ways taking turns, --changes times each, every change for another
   person (cancel at period end; the second change of the same person undoes it):
   - page: one of the person's open tabs clicks "Cancel subscription" (sends
     `DashboardState.confirm_cancel`; undo: `undo_cancel`) over its websocket. The worker
     holding that tab's socket handles the change, and Reflex records which worker holds
     each socket (its token record in Redis), so the person's other tabs split into other
     worker / same worker as the one that made the change.
   - api: `POST /api/v1/subscriptions/cancel` (undo: `/resume`) on a new connection; which
     worker answers is not known, so all tabs of the person are counted together.
   Latency per tab = when the tab received the delta showing the new cancel_at_period_end,
   from: the click or request being sent ("from action": includes the app's call to Stripe
   (the emulator) and its database write), and, where the app publishes changes through
   Redis, from the change being published ("from commit": the app publishes right after
   its transaction commits; this benchmark listens on the same channel). Code that does not
   publish (polling) has no "from commit" figure. A tab that has not seen the change within
   10 s of the click (api: of the answer) counts as missed. Each tab's row in the JSON also
   has action_ms (click -> the acting tab's own answer; api: request -> response) and
   from_ack_ms (latency from that answer; the API may answer before its commit, so this
   one can be negative), the 1-minute load average when the change was made, and how late
   this process's own event loop woke up at worst meanwhile (client_loop_lag_ms: a late
   wake-up delays when a tab notices its update, so a slow figure is not the app's alone).

Prints the tables and writes benchmarks/results/live.json, merged with the runs already
there and keyed by --label (e.g. "before" and "after"): machine, versions, load average,
worker count, tabs, users, git commit of the app measured (with its uncommitted files), the
idle windows (with 5 s intervals) and each tab's latency per change. Other programs on the
machine slow everything here; the idle database figures count the app's own work only.
About five minutes on two cores with the defaults; code that polls takes longer (15 minutes
for the polling dashboards before issue 12, which kept two cores busy).

Before/after, e.g. against the commit before the change (its .venv and .tools linked in):
    git worktree add /tmp/before <commit>
    ln -s $PWD/.venv $PWD/.tools /tmp/before/
    python -m benchmarks.live --app-root /tmp/before --label before
    python -m benchmarks.live --label after
    git worktree remove --force /tmp/before
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.machine import describe, run_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "live.json"
GOAL_IDLE_QUERIES_PER_DASHBOARD = 0.0  # per second
GOAL_LATENCY_MS = 1000.0  # a change reaches a page served by another worker

NAMESPACE = "/_event"
ROOT_STATE = "reflex___state____state"
DASHBOARD_STATE = (
    f"{ROOT_STATE}.subscription_app___state___auth____auth_state"
    ".subscription_app___state___billing____dashboard_state"
)
DASHBOARD_PATH = "/dashboard"
CHANGES_CHANNEL = "subscription_app:changes"  # subscription_app.changes.CHANNEL
SOCKET_RECORD_PREFIX = "token_manager_socket_record_"  # Reflex's RedisTokenManager
PASSWORD = "bench-live-Pass-1"
MISSED_AFTER_SECONDS = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------
# Small helpers


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: list[float]) -> dict[str, Any]:
    """n, p50, p95, max (milliseconds, rounded)."""
    if not values:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(percentile(values, 95), 1),
        "max_ms": round(max(values), 1),
    }


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (gone ones count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def worker_pids(app_pid: int, port: int) -> list[int]:
    """The backend worker processes: `reflex run` processes whose parent is one too."""
    marker = f"--frontend-port {port}"
    rows = {}
    for pid in _descendants(app_pid):
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{pid}/stat").read_text()
            rows[pid] = (int(stat.rsplit(")", 1)[1].split()[1]), marker in args)
    return [pid for pid, (ppid, ours) in rows.items() if ours and rows.get(ppid, (0, False))[1]]


# ------------------------------------------------------------------------------------------
# Isolated PostgreSQL database and Redis server


@contextlib.contextmanager
def private_database(server_url: str) -> Iterator[tuple[str, str, Any]]:
    """A new database on the server, dropped afterwards.

    Yields (its URL, its name, an AUTOCOMMIT engine on the server's own database for
    reading statistics, whose queries are not counted against the new database).
    """
    import sqlalchemy as sa

    from subscription_app.settings import Settings

    base = sa.engine.make_url(Settings(database_url=server_url).sqlalchemy_url)
    name = f"bench_live_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", pool_size=1)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False), name, admin
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A Redis server of our own on a free port, stopped afterwards."""
    import redis

    from devtools.liveapp import free_port

    port = free_port()
    with (workdir / "redis.log").open("w") as log:
        process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis.from_url(url, socket_timeout=1).ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)  # bounded wait for the server to listen
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------------
# People


@dataclass
class Person:
    """A registered, subscribed user and their bearer/session token."""

    id: int
    email: str
    token: str
    early_401s: int = 0  # answers of 401 just after the row they needed was written
    cancelled: bool = False


def make_person(app: Any, run_id: str, index: int) -> Person:
    """Register, log in and subscribe one person through the REST API."""
    import httpx
    import stripe

    email = f"live-{run_id}-{index}@example.com"
    sdk = stripe.StripeClient("sk_test_local_emulator", base_addresses={"api": app.stripe_api_base})
    early = 0

    def post(api: httpx.Client, path: str, body: dict, expect: int, **kwargs: Any) -> Any:
        # The API may answer before its transaction commits (FastAPI ends a `yield`
        # dependency after sending the response): a call that needs the row just written
        # (log in after registering, use the new token) can get 401 for a moment. Retried,
        # and counted.
        nonlocal early
        for _ in range(50):
            answer = api.post(path, json=body, **kwargs)
            if answer.status_code != 401:
                break
            early += 1
            time.sleep(0.1)  # bounded: 50 tries
        if answer.status_code != expect:
            raise RuntimeError(f"{path}: {answer.status_code} {answer.text}")
        return answer.json()

    credentials = {"email": email, "password": PASSWORD}
    with httpx.Client(base_url=app.url, timeout=60) as api:
        registered = post(api, "/api/v1/auth/register", credentials, 201)
        token = post(api, "/api/v1/auth/login", credentials, 200)["access_token"]
        card = sdk.v1.payment_methods.create(params={"type": "card", "card": {"token": "tok_visa"}})
        subscribed = post(
            api,
            "/api/v1/subscriptions/subscribe",
            {"payment_method_id": card.id},
            200,
            headers={"Authorization": f"Bearer {token}"},
        )
        if subscribed.get("status") != "active":
            raise RuntimeError(f"subscribe: {subscribed}")
    return Person(id=int(registered["id"]), email=email, token=token, early_401s=early)


def wait_for_webhooks(database_url: str, timeout: float = 180) -> dict[str, int]:
    """Until no webhook event is pending and none arrived for 5 s (bounded)."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url, pool_size=1)
    deadline = time.monotonic() + timeout
    last, stable_since = (-1, -1), time.monotonic()
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                total, pending = conn.execute(
                    sa.text(
                        "SELECT count(*), count(*) FILTER (WHERE status = 'pending')"
                        " FROM stripe_event"
                    )
                ).one()
            if (total, pending) != last:
                last, stable_since = (total, pending), time.monotonic()
            elif pending == 0 and time.monotonic() - stable_since >= 5:
                return {"events": total, "pending": pending}
            time.sleep(0.5)  # bounded poll while the emulator's webhooks are processed
        return {"events": last[0], "pending": last[1], "timed_out": 1}
    finally:
        engine.dispose()


def vacuum_analyze(database_url: str) -> None:
    """VACUUM ANALYZE the app's tables."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    finally:
        engine.dispose()


# Put on the app's PYTHONPATH (benchmark-side, no app change): every Python process of the
# app counts what its SQLAlchemy engines send (statements, commits, rollbacks, connection
# checkouts, each of which PostgreSQL sees as a ping here) and writes the totals to
# $BENCH_LIVE_COUNT_DIR/<pid>.json twice a second (<pid>.err if it could not start).
SITECUSTOMIZE = """
import json, os, threading, time


class _Counts:
    def __init__(self, out):
        self.out = out
        self.fresh()

    def fresh(self):
        # Also in a forked child (granian forks its workers): own totals, file and thread.
        self.lock = threading.Lock()
        self.counts = {"statements": 0, "commits": 0, "rollbacks": 0, "checkouts": 0}
        self.path = os.path.join(self.out, f"{os.getpid()}.json")
        threading.Thread(target=self.dump, daemon=True, name="bench-live-counts").start()

    def bump(self, key):
        with self.lock:
            self.counts[key] += 1

    def dump(self):
        written = None
        while True:
            time.sleep(0.5)
            with self.lock:
                now = dict(self.counts)
            if now != written:
                with open(self.path + ".tmp", "w") as f:
                    json.dump(now, f)
                os.replace(self.path + ".tmp", self.path)
                written = now


def _start():
    out = os.environ.get("BENCH_LIVE_COUNT_DIR")
    if not out:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    counts = _Counts(out)
    os.register_at_fork(after_in_child=counts.fresh)
    event.listen(Engine, "before_cursor_execute", lambda *a, **k: counts.bump("statements"))
    event.listen(Engine, "commit", lambda *a: counts.bump("commits"))
    event.listen(Engine, "rollback", lambda *a: counts.bump("rollbacks"))
    event.listen(Pool, "checkout", lambda *a: counts.bump("checkouts"))


try:
    _start()
except Exception as exc:
    try:
        with open(os.path.join(os.environ["BENCH_LIVE_COUNT_DIR"], f"{os.getpid()}.err"), "w") as f:
            f.write(repr(exc))
    except Exception:
        pass
"""


def instrument(workdir: Path) -> dict[str, str]:
    """The environment that makes the app's processes count their database calls."""
    code, counts = workdir / "instrument", workdir / "counts"
    code.mkdir()
    counts.mkdir()
    (code / "sitecustomize.py").write_text(SITECUSTOMIZE.lstrip())
    path = os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "BENCH_LIVE_COUNT_DIR": str(counts)}


def app_counts(directory: Path) -> dict[str, int]:
    """The app's processes' database calls so far (summed over their files)."""
    total = {"statements": 0, "commits": 0, "rollbacks": 0, "checkouts": 0}
    for path in directory.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            for key, value in json.loads(path.read_text()).items():
                total[key] = total.get(key, 0) + int(value)
    return total


# ------------------------------------------------------------------------------------------
# Idle load


@dataclass
class Counters:
    """Cumulative counters at one moment."""

    at: float
    statements: int
    app_transactions: int
    checkouts: int
    xacts: int
    rows: int
    redis_commands: int
    app_cpu: float
    db_cpu: float


class Sampler:
    """Reads the counters of the app's database, its Redis and its processes."""

    def __init__(
        self, admin: Any, database: str, redis_url: str, app_pid: int, counts: Path
    ) -> None:
        import redis

        self.admin, self.database, self.app_pid, self.counts = admin, database, app_pid, counts
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=5)

    def read(self) -> Counters:
        import sqlalchemy as sa

        with self.admin.connect() as conn:
            xacts, rows = conn.execute(
                sa.text(
                    "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched"
                    " FROM pg_stat_database WHERE datname = :name"
                ),
                {"name": self.database},
            ).one()
            backends = [
                int(pid)
                for (pid,) in conn.execute(
                    sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :name"),
                    {"name": self.database},
                )
            ]
        commands = int(self.redis.info("stats")["total_commands_processed"])
        calls = app_counts(self.counts)
        return Counters(
            at=time.monotonic(),
            statements=calls["statements"],
            app_transactions=calls["commits"] + calls["rollbacks"],
            checkouts=calls["checkouts"],
            xacts=int(xacts),
            rows=int(rows),
            redis_commands=commands,
            app_cpu=_cpu_seconds(_descendants(self.app_pid)),
            db_cpu=_cpu_seconds(backends),
        )


def rates(start: Counters, end: Counters) -> dict[str, float]:
    """Per-second rates between two readings."""
    seconds = end.at - start.at
    return {
        "seconds": round(seconds, 2),
        "app_statements_per_s": round((end.statements - start.statements) / seconds, 2),
        "app_transactions_per_s": round(
            (end.app_transactions - start.app_transactions) / seconds, 2
        ),
        "app_connection_checkouts_per_s": round((end.checkouts - start.checkouts) / seconds, 2),
        "transactions_per_s": round((end.xacts - start.xacts) / seconds, 2),
        "rows_read_per_s": round((end.rows - start.rows) / seconds, 1),
        # Less our own INFO call at the end of the window.
        "redis_commands_per_s": round((end.redis_commands - start.redis_commands - 1) / seconds, 2),
        "app_cpu_s_per_s": round((end.app_cpu - start.app_cpu) / seconds, 3),
        "postgres_cpu_s_per_s": round((end.db_cpu - start.db_cpu) / seconds, 3),
    }


async def idle_window(sampler: Sampler, seconds: float, interval: float = 5.0) -> dict[str, Any]:
    """Counters every `interval` s for `seconds` s; the rates over the whole window."""
    readings = [await asyncio.to_thread(sampler.read)]
    end = readings[0].at + seconds
    while readings[-1].at < end - 0.01:
        await asyncio.sleep(max(0.0, min(interval, end - time.monotonic())))
        readings.append(await asyncio.to_thread(sampler.read))
    return {
        **rates(readings[0], readings[-1]),
        "intervals": [rates(a, b) for a, b in itertools.pairwise(readings)],
    }


# ------------------------------------------------------------------------------------------
# Simulated dashboard tabs

# What the dashboard's buttons send for each parameter of a DashboardState event handler
# (the cancel dialog's default choice).
PAGE_ARGUMENTS = {"when": "At the end of the period"}


def page_payload(app_root: Path, handler: str) -> dict[str, Any]:
    """The payload the page sends to `DashboardState.<handler>`, from the app's source.

    Read from the checkout measured, so the same benchmark drives versions whose handlers
    take different parameters.
    """
    source = (app_root / "subscription_app" / "state" / "billing.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.ClassDef) and node.name == "DashboardState"):
            continue
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == handler:
                names = [a.arg for a in item.args.args[1:]]
                required = names[: len(names) - len(item.args.defaults)]
                unknown = [n for n in required if n not in PAGE_ARGUMENTS]
                if unknown:
                    raise RuntimeError(f"DashboardState.{handler}: unknown parameters {unknown}")
                return {n: PAGE_ARGUMENTS[n] for n in names if n in PAGE_ARGUMENTS}
    raise RuntimeError(f"DashboardState.{handler} not found in the app's source")


class Tab:
    """One browser tab on /dashboard, as Reflex's compiled frontend drives it."""

    def __init__(self, index: int, person: Person, url: str, cookie: str, http: Any) -> None:
        import socketio

        self.index, self.person, self.url = index, person, url
        self.token = str(uuid.uuid4())  # the tab token (sessionStorage in a browser)
        self.sio = socketio.AsyncClient(
            reconnection=False,
            http_session=http,
            # Sent as given in the websocket handshake (not through a cookie jar).
            websocket_extra_options={
                "headers": {"Cookie": f"{cookie}={person.token}", "Origin": url}
            },
        )
        self.sio.on("event", self._on_event, namespace=NAMESPACE)
        self.sio.on("disconnect", self._on_disconnect, namespace=NAMESPACE)
        self.open = asyncio.Event()
        self.hydrated = False
        self.status = ""
        self.has_dashboard_state = False
        self.expect: bool | None = None  # the cancel_at_period_end value waited for
        self.seen = asyncio.Event()
        self.seen_at = 0.0
        self.result = asyncio.Event()  # this tab's own cancel/undo answered
        self.result_at = 0.0
        self.redirects: list[str] = []
        self.updates = 0
        self.disconnected = False
        self.instance = ""
        self.connect_seconds = 0.0

    def _on_event(self, update: dict) -> None:
        now = time.perf_counter()
        self.updates += 1
        delta = update.get("delta") or {}
        for name, values in delta.items():
            if name == ROOT_STATE and "is_hydrated_rx_state_" in values:
                self.hydrated = bool(values["is_hydrated_rx_state_"])
            if name != DASHBOARD_STATE:
                continue
            self.has_dashboard_state = True
            if (
                values.get("result_message_rx_state_")
                or values.get("action_error_rx_state_")
                or "action_seq_rx_state_" in values  # newer pages count their answers
            ):
                self.result_at = now
                self.result.set()
            subscription = values.get("subscription_rx_state_")
            if isinstance(subscription, dict):
                self.status = str(subscription.get("status") or "")
                cancel = subscription.get("cancel_at_period_end")
                if self.expect is not None and cancel == self.expect and not self.seen.is_set():
                    self.seen_at = now
                    self.seen.set()
        for event in update.get("events") or []:
            if event.get("name") == "_redirect":
                self.redirects.append(str((event.get("payload") or {}).get("path")))
        if self.hydrated and self.status == "active":
            self.open.set()

    def _on_disconnect(self, *args: Any) -> None:
        self.disconnected = True

    async def connect(self, timeout: float) -> None:
        """Open the websocket with the page's boot event; wait until the dashboard shows."""
        started = time.perf_counter()
        boot = {
            "name": f"{ROOT_STATE}.hydrate_and_load",
            "payload": {},
            "router_data": {"pathname": DASHBOARD_PATH, "asPath": DASHBOARD_PATH},
        }
        await self.sio.connect(
            f"{self.url}?token={self.token}",
            socketio_path="_event",
            transports=["websocket"],
            namespaces=[NAMESPACE],
            auth={"event": boot},
            wait_timeout=timeout,
        )
        await asyncio.wait_for(self.open.wait(), timeout)
        self.connect_seconds = time.perf_counter() - started

    async def send(self, handler: str, payload: dict[str, Any]) -> None:
        """A click on the dashboard: an event to DashboardState.<handler>."""
        await self.sio.emit(
            "event",
            {
                "name": f"{DASHBOARD_STATE}.{handler}",
                "payload": payload,
                "router_data": {"pathname": DASHBOARD_PATH, "asPath": DASHBOARD_PATH},
            },
            namespace=NAMESPACE,
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sio.disconnect(), 10)


async def open_tabs(
    tabs: list[Tab], concurrency: int, timeout: float
) -> tuple[list[Tab], list[str]]:
    """Connect every tab (`concurrency` at a time); the open ones and the failures."""
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(tab: Tab) -> None:
        async with gate:
            try:
                await tab.connect(timeout)
            except Exception as exc:
                failures.append(
                    f"tab {tab.index}: {type(exc).__name__} {exc} "
                    f"(redirects {tab.redirects}, dashboard state {tab.has_dashboard_state})"
                )

    await asyncio.gather(*(one(tab) for tab in tabs))
    return [tab for tab in tabs if tab.open.is_set()], failures


async def read_instances(redis_url: str, tabs: list[Tab]) -> None:
    """Which worker holds each tab's socket (Reflex's token record in Redis)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        values = await client.mget([SOCKET_RECORD_PREFIX + tab.token for tab in tabs])
    finally:
        await client.aclose()
    for tab, raw in zip(tabs, values, strict=True):
        # A pickled SocketRecord(instance_id=..., sid=...): read the string after the field
        # name (pickle's SHORT_BINUNICODE: 0x8c, a length byte, the UTF-8 bytes).
        found = re.search(rb"instance_id\x94?\x8c(.)", raw or b"", re.DOTALL)
        if found:
            start = found.end()
            tab.instance = raw[start : start + found.group(1)[0]].decode(errors="replace")


class LoopLag:
    """How late this process's event loop wakes up (so a slow tab is not our own delay)."""

    def __init__(self, period: float = 0.02) -> None:
        self.period, self.worst = period, 0.0
        self.task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, time.perf_counter() - before - self.period)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def reset(self) -> None:
        self.worst = 0.0

    def worst_ms(self) -> float:
        return round(self.worst * 1000, 1)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class Publications:
    """Listens on the app's change channel: when each user's change was published."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.times: dict[int, list[float]] = {}
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def _listen(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.redis_url)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(CHANGES_CHANNEL)
                self.ready.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is None or message.get("type") != "message":
                        continue
                    now = time.perf_counter()
                    data = message["data"]
                    text = data.decode() if isinstance(data, bytes) else str(data)
                    for part in text.split(","):
                        if part.strip().isdigit():
                            self.times.setdefault(int(part), []).append(now)
        finally:
            await client.aclose()

    async def start(self) -> None:
        self.task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self.ready.wait(), 10)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    def first_after(self, user_id: int, moment: float) -> float | None:
        return next((t for t in self.times.get(user_id, []) if t >= moment), None)


# ------------------------------------------------------------------------------------------
# Changes


async def one_change(
    via: str,
    number: int,
    person: Person,
    tabs: list[Tab],
    api: Any,
    publications: Publications,
    payloads: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Cancel (or undo) for `person` through a tab or the API; each tab's latency."""
    target = not person.cancelled
    actor = tabs[number % len(tabs)] if via == "page" else None
    for tab in tabs:
        tab.expect, tab.seen_at = target, 0.0
        tab.seen.clear()
        tab.result.clear()
    ack = 0.0
    sent = time.perf_counter()
    if actor is not None:
        handler = "confirm_cancel" if target else "undo_cancel"
        await actor.send(handler, payloads[handler])
    else:
        path = "/api/v1/subscriptions/cancel" if target else "/api/v1/subscriptions/resume"
        body = {"at_period_end": True} if target else None
        answer = await api.post(
            path, json=body, headers={"Authorization": f"Bearer {person.token}"}
        )
        ack = time.perf_counter()
        if answer.status_code != 200:
            raise RuntimeError(f"{path}: {answer.status_code} {answer.text}")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(tab.seen.wait() for tab in tabs)), MISSED_AFTER_SECONDS
        )
    if actor is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(actor.result.wait(), MISSED_AFTER_SECONDS)
        ack = actor.result_at if actor.result.is_set() else 0.0
    if any(tab.seen.is_set() for tab in tabs):
        person.cancelled = target
    published = publications.first_after(person.id, sent)
    rows = []
    for tab in tabs:
        seen = tab.seen_at if tab.seen.is_set() else None
        worker = None
        if actor is not None and tab.instance and actor.instance:
            worker = (
                "acting tab"
                if tab is actor
                else ("same worker" if tab.instance == actor.instance else "other worker")
            )
        rows.append(
            {
                "via": via,
                "change": number,
                "user": person.id,
                "cancel_at_period_end": target,
                "tab": tab.index,
                "instance": tab.instance,
                "worker": worker,
                "missed": seen is None,
                "from_action_ms": _ms(seen, sent),
                "from_ack_ms": _ms(seen, ack or None),
                "from_commit_ms": _ms(seen, published),
                "action_ms": round((ack - sent) * 1000, 2) if ack else None,
            }
        )
    return rows


def _ms(end: float | None, start: float | None) -> float | None:
    return None if end is None or start is None else round((end - start) * 1000, 2)


def latency_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per path and tab group: from action / from commit percentiles, and misses."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["via"] == "page":
            key = f"page, {row['worker'] or 'unknown worker'}"
        else:
            key = "api, all tabs"
        groups.setdefault(key, []).append(row)
    result = {}
    for key, members in sorted(groups.items()):
        loads = [r["load_average_1m"] for r in members if "load_average_1m" in r]
        result[key] = {
            "tabs": len(members),
            "missed": sum(1 for r in members if r["missed"]),
            "load_average_1m": [min(loads), max(loads)] if loads else None,
            "client_loop_lag_max_ms": max(
                (r.get("client_loop_lag_ms") or 0.0 for r in members), default=None
            ),
            "from_action": summary([r["from_action_ms"] for r in members if not r["missed"]]),
            "from_commit": summary(
                [r["from_commit_ms"] for r in members if r["from_commit_ms"] is not None]
            ),
        }
    return result


# ------------------------------------------------------------------------------------------
# One run


async def live_phase(
    app: Any,
    people: list[Person],
    sampler: Sampler,
    redis_url: str,
    args: argparse.Namespace,
    log: Any,
) -> dict[str, Any]:
    """Idle windows without and with the tabs open, then the changes."""
    import aiohttp
    import httpx

    result: dict[str, Any] = {}
    payloads = {h: page_payload(args.app_root, h) for h in ("confirm_cancel", "undo_cancel")}
    # PostgreSQL publishes an idle backend's counts some seconds late: let setup's pass.
    log(f"settling {args.settle_seconds:.0f} s, then idle with no dashboard open")
    await asyncio.sleep(args.settle_seconds)
    result["idle_none"] = await idle_window(sampler, args.idle_seconds)

    cookie = "__Host-sa_session" if app.env.get("APP_ENV") == "production" else "sa_session"
    http = aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), connector=aiohttp.TCPConnector(limit=0)
    )
    tabs = [Tab(i, people[i % len(people)], app.url, cookie, http) for i in range(args.clients)]
    publications = Publications(redis_url)
    # No keep-alive: each API change comes on a new connection, which any worker may accept.
    api = httpx.AsyncClient(
        base_url=app.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    )
    try:
        await publications.start()
        log(f"opening {len(tabs)} dashboards")
        started = time.perf_counter()
        opened, failures = await open_tabs(tabs, args.connect_concurrency, args.connect_timeout)
        result["open"] = {
            "asked": len(tabs),
            "opened": len(opened),
            "failures": failures[:20],
            "failed": len(failures),
            "seconds": round(time.perf_counter() - started, 1),
            "connect_to_dashboard": summary([t.connect_seconds * 1000 for t in opened]),
        }
        log(f"  {len(opened)} open, {len(failures)} failed, {result['open']['seconds']} s")
        for failure in failures[:5]:
            log(f"  {failure}")
        if not opened:
            raise RuntimeError("no dashboard opened")
        await read_instances(redis_url, opened)
        instances = sorted({t.instance for t in opened if t.instance})
        result["open"]["workers_holding_tabs"] = len(instances)
        result["open"]["tabs_per_worker"] = sorted(
            (sum(1 for t in opened if t.instance == i) for i in instances), reverse=True
        )
        log(f"  tabs per worker: {result['open']['tabs_per_worker']}")

        log(f"settling {args.settle_seconds:.0f} s, then idle with {len(opened)} open")
        await asyncio.sleep(args.settle_seconds)
        result["idle_open"] = await idle_window(sampler, args.idle_seconds)
        result["idle_open"]["dashboards"] = len(opened)
        result["open"]["still_connected_after_idle"] = sum(
            1 for t in opened if t.sio.connected and not t.disconnected
        )
        result["open"]["redirected"] = sum(1 for t in opened if t.redirects)

        by_person: dict[int, list[Tab]] = {}
        for tab in opened:
            by_person.setdefault(tab.person.id, []).append(tab)
        order = [p for p in people if p.id in by_person]
        rows: list[dict[str, Any]] = []
        unanswered = {"page": 0, "api": 0}
        log(f"{args.changes} changes through a page, {args.changes} through the api, in turns")
        lag = LoopLag()
        lag.start()
        for number in range(args.changes):
            for via in ("page", "api"):
                # Page changes start at the first person, api changes half-way round.
                offset = 0 if via == "page" else len(order) // 2
                person = order[(offset + number) % len(order)]
                lag.reset()
                load = os.getloadavg()[0]
                change = await one_change(
                    via, number, person, by_person[person.id], api, publications, payloads
                )
                for row in change:
                    row.update(load_average_1m=round(load, 2), client_loop_lag_ms=lag.worst_ms())
                rows += change
                if all(row["missed"] and row["action_ms"] is None for row in change):
                    unanswered[via] += 1
                    if unanswered[via] >= 3:
                        raise RuntimeError(f"{via} changes go unanswered (see the app's log)")
                else:
                    unanswered[via] = 0
                await asyncio.sleep(args.change_gap)
        await lag.stop()
        result["changes"] = rows
        result["latency"] = latency_summary(rows)
        covered = {row["tab"] for row in rows if not row["missed"]}
        result["open"]["tabs_that_saw_a_change"] = len(covered)
        result["open"]["tabs_asked_to_see_a_change"] = len({row["tab"] for row in rows})
        result["publications_seen"] = sum(len(v) for v in publications.times.values())
    finally:
        await publications.stop()
        await asyncio.gather(*(tab.close() for tab in tabs))
        await http.close()
        await api.aclose()
    return result


def stop_app(app: Any, port: int) -> None:
    """Stop the app; then end any of its processes still running (found by pid)."""
    started = _descendants(app.process.pid)
    marker = f"--frontend-port {port}"
    app.stop()
    # `reflex run` has its own process group; if the launcher was gone before stopping it,
    # its workers would be left behind.
    for pid in [p for p in started if p != app.process.pid]:
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if marker in args or "stripe_emulator" in args:
                os.kill(pid, signal.SIGKILL)


def bench_run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Start everything, measure, stop everything."""
    import redis

    from devtools.liveapp import start_live_app
    from devtools.pgschema import fresh_schema

    begun = time.monotonic()
    run_id = uuid.uuid4().hex[:6]
    result: dict[str, Any] = {"label": args.label, "app_root": str(args.app_root)}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-live-")))
        if args.redis:
            redis_url = args.redis
            redis.Redis.from_url(redis_url).flushdb()
            result["redis"] = "given (flushed; its pub/sub channel may be shared)"
        else:
            redis_url = stack.enter_context(private_redis(workdir))
            result["redis"] = "private redis-server"
        database_url, database, admin = stack.enter_context(private_database(args.postgres))
        schema_url = stack.enter_context(fresh_schema(database_url, prefix="bench"))
        web_dir = args.web_dir or workdir / "web"
        log(f"starting the app from {args.app_root} (database {database})")
        started = time.monotonic()
        counting = instrument(workdir)
        app = start_live_app(
            workdir / "app",
            **counting,
            DATABASE_URL=schema_url,
            REDIS_URL=redis_url,
            REFLEX_WEB_WORKDIR=str(web_dir),
            # 2 x users registrations and logins from 127.0.0.1 within the window.
            RATE_LIMIT_ATTEMPTS_PER_ADDRESS="100000",
        )
        port = int(app.url.rsplit(":", 1)[1])
        stack.callback(stop_app, app, port)
        stack.push(lambda kind, *_: kind is not None and log(f"app log (end):\n{app.log()}"))
        workers = worker_pids(app.process.pid, port)
        result["start_seconds"] = round(time.monotonic() - started, 1)
        result["workers"] = len(workers)
        log(f"  up in {result['start_seconds']} s at {app.url}, {len(workers)} workers")

        log(f"subscribing {args.users} people")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.setup_concurrency) as pool:
            people = list(pool.map(lambda i: make_person(app, run_id, i), range(args.users)))
        result["subscribe_seconds"] = round(time.monotonic() - started, 1)
        result["setup_401s_before_commit"] = sum(p.early_401s for p in people)
        result["webhooks_after_subscribing"] = wait_for_webhooks(schema_url)
        # Statistics up to date now, so autovacuum's analyze of the new rows does not read
        # them during a measured window.
        vacuum_analyze(schema_url)
        log(
            f"  {result['subscribe_seconds']} s ({result['setup_401s_before_commit']} early 401s);"
            f" webhooks {result['webhooks_after_subscribing']}"
        )

        sampler = Sampler(
            admin, database, redis_url, app.process.pid, Path(counting["BENCH_LIVE_COUNT_DIR"])
        )
        result.update(asyncio.run(live_phase(app, people, sampler, redis_url, args, log)))
        result["users"] = len(people)
        result["clients"] = args.clients
        log("stopping")
    result["run_seconds"] = round(time.monotonic() - begun, 1)
    return result


# ------------------------------------------------------------------------------------------
# Report


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def report(run: dict[str, Any]) -> str:
    """One run's tables."""
    none, busy = run["idle_none"], run["idle_open"]
    tabs = busy["dashboards"]
    lines = [
        f"{run['label']}: {run['app_root']} ({run.get('git_commit', '')[:7]}), "
        f"{run['workers']} workers, {tabs} dashboards of {run['users']} people "
        f"({run['open']['workers_holding_tabs']} workers hold tabs: "
        f"{run['open']['tabs_per_worker']}), run {run['run_seconds']:.0f} s",
        "",
        f"{'idle, per second':<28}{'0 open':>10}{f'{tabs} open':>12}{'per dashboard':>15}",
    ]
    for key, label, digits in (
        ("app_statements_per_s", "app SQL statements", 2),
        ("app_transactions_per_s", "app transactions", 2),
        ("app_connection_checkouts_per_s", "app pool checkouts", 2),
        ("transactions_per_s", "db transactions (server)", 2),
        ("rows_read_per_s", "db rows read", 1),
        ("redis_commands_per_s", "redis commands", 2),
        ("app_cpu_s_per_s", "app CPU (s)", 3),
        ("postgres_cpu_s_per_s", "postgres CPU (s)", 3),
    ):
        per = (busy[key] - none[key]) / tabs if tabs else None
        lines.append(
            f"{label:<28}{_fmt(none[key], digits):>10}{_fmt(busy[key], digits):>12}"
            f"{_fmt(per, 4):>15}"
        )
    lines += [
        "",
        f"{'change -> tab (ms)':<26}{'tabs':>6}{'missed':>8}"
        f"{'p50':>9}{'p95':>9}{'max':>9}   {'from commit p50/p95/max':>24}",
    ]
    for key, group in run["latency"].items():
        action, commit = group["from_action"], group["from_commit"]
        committed = (
            "/".join(_fmt(commit[k]) for k in ("p50_ms", "p95_ms", "max_ms"))
            if commit["n"]
            else "-"
        )
        lines.append(
            f"{key:<26}{group['tabs']:>6}{group['missed']:>8}{_fmt(action['p50_ms']):>9}"
            f"{_fmt(action['p95_ms']):>9}{_fmt(action['max_ms']):>9}   {committed:>24}"
        )
    lines += ["", goals_line(run)]
    loads = [g["load_average_1m"] for g in run["latency"].values() if g.get("load_average_1m")]
    if loads:
        lags = [g.get("client_loop_lag_max_ms") or 0.0 for g in run["latency"].values()]
        lines.append(
            f"(load average meanwhile {min(x[0] for x in loads):.1f}-"
            f"{max(x[1] for x in loads):.1f}; this process's event loop late by at most "
            f"{max(lags):.0f} ms)"
        )
    return "\n".join(lines)


def goals_line(run: dict[str, Any]) -> str:
    """Issue 12's two goals, met or not, for one run."""
    none, busy = run["idle_none"], run["idle_open"]
    tabs = busy["dashboards"]
    per_tab = (busy["app_statements_per_s"] - none["app_statements_per_s"]) / tabs
    # Counting is exact; 0.005 per tab allows one stray statement in a window of 500 tabs.
    idle_met = per_tab <= GOAL_IDLE_QUERIES_PER_DASHBOARD + 0.005
    other = run["latency"].get("page, other worker", {})
    worst = other.get("from_action", {}).get("max_ms")
    fast_met = worst is not None and not other.get("missed") and worst < GOAL_LATENCY_MS
    return (
        f"goals: idle SQL statements per open dashboard per s {per_tab:.3f} (goal 0): "
        f"{'met' if idle_met else 'NOT met'}; change -> tab on another worker, slowest "
        f"{_fmt(worst)} ms, {other.get('missed', '-')} missed (goal < {GOAL_LATENCY_MS:.0f} ms): "
        f"{'met' if fast_met else 'NOT met'}"
    )


def comparison(runs: dict[str, dict[str, Any]]) -> str:
    """Every label in the results file side by side."""
    lines = [
        f"{'label':<12}{'workers':>8}{'tabs':>6}{'stmt/s 0':>10}{'stmt/s open':>13}"
        f"{'per tab':>9}{'db tx/s 0':>11}{'db tx/s open':>14}"
        f"{'other-worker p50':>18}{'p95':>8}{'max':>8}{'missed':>8}",
    ]
    for label, run in runs.items():
        none, busy = run["idle_none"], run["idle_open"]
        tabs = busy["dashboards"]
        statements = [none.get("app_statements_per_s"), busy.get("app_statements_per_s")]
        per_tab = (
            (statements[1] - statements[0]) / tabs if None not in statements and tabs else None
        )
        other = run["latency"].get("page, other worker", {})
        action = other.get("from_action", {})
        lines.append(
            f"{label:<12}{run['workers']:>8}{tabs:>6}{_fmt(statements[0], 2):>10}"
            f"{_fmt(statements[1], 2):>13}{_fmt(per_tab, 3):>9}"
            f"{none['transactions_per_s']:>11.2f}{busy['transactions_per_s']:>14.2f}"
            f"{_fmt(action.get('p50_ms')):>18}{_fmt(action.get('p95_ms')):>8}"
            f"{_fmt(action.get('max_ms')):>8}{_fmt(other.get('missed')):>8}"
        )
    return "\n".join(lines)


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    """Where and on what the figures were taken."""
    import sqlalchemy as sa

    from subscription_app.settings import Settings

    info = describe(("reflex", "granian", "python-socketio", "sqlalchemy", "psycopg", "redis"))
    versions = info["versions"]
    engine = sa.create_engine(Settings(database_url=args.postgres).sqlalchemy_url)
    try:
        with engine.connect() as conn:
            versions["postgresql"] = conn.execute(sa.text("SHOW server_version")).scalar()
    finally:
        engine.dispose()
    versions["redis-server"] = run_text(["redis-server", "--version"])
    return info


def _columns(rows: Any) -> Any:
    """Per-tab rows as {"columns": [...], "rows": [[...], ...]} (written one row a line)."""
    if isinstance(rows, dict) and "rows" in rows:  # read back from the file: already so
        return {**rows, "rows": ["@row@" + json.dumps(r) for r in rows["rows"]]}
    if not isinstance(rows, list) or not rows:
        return rows
    columns = list(rows[0])
    table = []
    for row in rows:
        values = [row.get(c) for c in columns]
        if "instance" in columns:  # a worker's id: the first 8 characters tell them apart
            i = columns.index("instance")
            values[i] = (values[i] or "")[:8]
        table.append("@row@" + json.dumps(values))
    return {"columns": columns, "rows": table}


def write_results(path: Path, run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Merge this run into the results file (same label: replaced); all runs by label."""
    runs: dict[str, dict[str, Any]] = {}
    if path.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            runs = dict(json.loads(path.read_text())["runs"])
    runs[run["label"]] = run
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "benchmarks/live.py",
        "goals": {
            "idle_db_statements_per_dashboard_per_s": GOAL_IDLE_QUERIES_PER_DASHBOARD,
            "other_worker_latency_ms_max": GOAL_LATENCY_MS,
        },
        "runs": {label: {**r, "changes": _columns(r.get("changes"))} for label, r in runs.items()},
    }
    text = json.dumps(document, indent=2, default=str)
    # Each per-tab row on one line.
    text = re.sub(r'"@row@(.*)"', lambda m: json.loads(f'"{m.group(1)}"'), text)
    path.write_text(text + "\n")
    return runs


def main() -> None:
    """Parse the arguments, run once, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=500, help="open dashboards (500)")
    parser.add_argument("--users", type=int, default=50, help="people, tabs spread evenly (50)")
    parser.add_argument("--idle-seconds", type=float, default=30, help="each idle window (30)")
    parser.add_argument(
        "--settle-seconds", type=float, default=20, help="before each idle window (20)"
    )
    parser.add_argument("--changes", type=int, default=25, help="per path, page and api (25)")
    parser.add_argument("--change-gap", type=float, default=1.5, help="s between changes (1.5)")
    parser.add_argument("--label", default="after", help="key in the results file (after)")
    parser.add_argument("--app-root", type=Path, default=ROOT, help="checkout of the app to run")
    parser.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL"))
    parser.add_argument("--redis", default=None, help="default: a private redis-server")
    parser.add_argument("--web-dir", type=Path, default=None, help="reuse a frontend build dir")
    parser.add_argument("--connect-concurrency", type=int, default=16)
    parser.add_argument("--connect-timeout", type=float, default=60)
    parser.add_argument("--setup-concurrency", type=int, default=4)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    # The app is stopped with Ctrl-C (SIGINT): make sure our children do not inherit an
    # ignored SIGINT (as from a shell's background job), or they could not be stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if not args.postgres:
        parser.error("needs --postgres or TEST_DATABASE_URL")
    if args.clients < 1 or args.users < 1:
        parser.error("--clients and --users must be positive")
    args.app_root = args.app_root.resolve()
    # The app's own modules (devtools, subscription_app) come from the checkout measured.
    sys.path.insert(0, str(args.app_root))

    def log(message: str) -> None:
        print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)

    machine = machine_info(args)
    run = bench_run(args, log)
    dirty = run_text(["git", "status", "--porcelain", "--untracked-files=no"], args.app_root)
    run.update(
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        git_commit=run_text(["git", "rev-parse", "HEAD"], args.app_root),
        git_uncommitted_changes=[line[3:] for line in dirty.splitlines()],
        machine={**machine, "load_average_at_end": os.getloadavg()},
        settings={
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in {"postgres", "output"}
        },
    )
    print()
    print(report(run))
    runs = write_results(args.output, run)
    if len(runs) > 1:
        print()
        print(comparison(runs))
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
