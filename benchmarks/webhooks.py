"""Webhook intake: the app as `make run` starts it against a bare signature check.

    python -m benchmarks.webhooks [--databases sqlite postgresql] [--events 2000]
        [--connections 8] [--threads 2] [--burst 2000] [--steady-rate 100]
        [--steady-seconds 20] [--users 200] [--inbox-rows 0 [1000000 ...]] [--workers N]
        [--rounds 3] [--py-spy DIR]
    make bench ARGS="--events 5000"

Needs `wrk`, the HTTP load generator (Debian/Ubuntu: `apt-get install -y wrk`; macOS:
`brew install wrk`), and for PostgreSQL a server and Redis: --postgres and --redis, or
TEST_DATABASE_URL and TEST_REDIS_URL (or REDIS_URL). Without them only SQLite runs.

For each database and each --inbox-rows value, in a fresh temporary directory:

1. The database: SQLite (a file, what `make run` uses by default) or PostgreSQL (a fresh
   schema, dropped at the end), migrated with the app's own migrations. With --inbox-rows
   N, N already-processed events ('done', processed_at set, unique ids, one small valid
   encrypted payload) are bulk-inserted into the inbox table (stripe_event) and the table is
   analysed, as a long-running one would be; then the app starts on it.
2. The app, started exactly as `make run` does (`devtools.liveapp.start_live_app`:
   `python -m devtools.run`: Stripe emulator, migrations, `reflex run --env prod`, served by
   granian with every middleware and a webhook processor in every worker). SQLite runs
   without Redis, so Reflex starts one worker; PostgreSQL gets REDIS_URL, the production
   shape, and the app starts one worker per CPU, 2 to 8 (`Settings.server_workers`), or
   --workers. Workers are counted from the process tree. The app logs each Stripe call's
   duration (STRIPE_TIMING_LOG).
3. --users people subscribed through the app's own subscribe path (`start_subscription`,
   run here with the app's keys and database) against the app's emulator; then the
   emulator's own webhooks about them are left to be processed.
4. The bare app (`benchmarks/bare_webhook.py`: `stripe.WebhookSignature.verify_header` on
   the body, then 200 JSON; nothing else) on granian with the same number of workers.
5. One load generator outside both servers: wrk (-c --connections, -t --threads), with a
   Lua script that sends every event of a file exactly once, a different body and
   Stripe-Signature each (signed just before); for the steady rate, a paced Python sender
   in a child process.

The events are signed `customer.subscription.updated` events (unique ids, increasing
`created`) naming the seeded subscriptions. The app applies each one for real: it re-reads
the subscription from Stripe (the emulator) under the subscription's lock and writes the
row. Only the HTTP route and the stripe_event columns event_id, status, received_at and
processed_at (and the subscription table) are relied on. What is measured:

- intake: a burst of --events events to the bare app, then to the app (each after a
  warm-up). events/s = 2xx answers / (first request sent -> last answer received);
  ratio = app / bare; p50/p99 = wrk's latency of the answers; sent, 2xx, non-2xx (with
  socket errors) as wrk saw them; stored = rows of those event ids in stripe_event.
  With --rounds N (3), N such pairs, each app burst fully processed before the next bare one
  (so the two never share the CPU with a backlog): this shared machine moves the ratio by
  +-0.05 between identical runs. The round with the median ratio is reported (its rates,
  CPU, latency, lag), every round's ratio beside it; nothing may be lost in any round.
- drain: first request of a burst sent -> every event of it processed (status no longer
  'pending' and processed_at set; the latest processed_at); "then ... s more" is how long
  processing went on after the last answer. Measured for the intake burst, and for a
  separate burst of --burst events (2,000, the goal's figure) when --events differs.
- lag: at a steady --steady-rate events/s for --steady-seconds, per event receipt ->
  applied (processed_at - received_at): p50/p95/max; and the answers' p50/p99.
- Stripe calls: how many the app made in each phase and their p50/p95 duration (the
  emulator runs on this machine; Stripe itself answers slower, from farther away).
- rows: the seeded subscriptions whose row still says active, as the emulator does.
- CPU per event during the intake bursts (from /proc, user + system): the app's workers,
  their webhook processors and, on PostgreSQL, the database server's processes (all of
  them, whoever they serve); the bare app's workers; for both, the load generator (wrk)
  and the whole machine (every process, from /proc/stat) with how busy its cores were.
  Steadier than the rates on a shared machine: it counts the work, not how much of the
  machine the work got. Where both runs keep the cores busy, the ratio cannot exceed bare
  machine CPU per event / app machine CPU per event; where one worker is the limit (SQLite
  runs one), it is about bare worker CPU per event / app worker CPU per event.
- with --py-spy DIR: py-spy samples every app worker during the app's intake burst; the
  report splits the samples into intake, processor and other, with their top frames.

Goals checked (issue 12): intake >= 0.5 x bare; p99 < 50 ms at 8 connections; nothing lost
(every event answered 2xx, stored and processed, none failed); steady lag p95 < 250 ms; a
burst of 2,000 fully applied within 10 s (the goal is for PostgreSQL; shown for SQLite).
With --inbox-rows 1000000 the same goals hold for a table holding 1,000,000 processed events.

Prints a table per run and a summary, and writes benchmarks/results/webhooks.json (merged
with the runs already there, keyed by database and inbox rows; machine, versions, load
average, worker counts and git commit with the files changed but not committed). Other load
on the machine moves absolute rates: compare the ratio, which both targets share. A full
run (both databases, 5,000 events, no prefill) takes about ten minutes on two cores; a
1,000,000-row prefill adds a few minutes per database.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client
import itertools
import json
import multiprocessing
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.machine import describe, run_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "webhooks.json"
ROUTE_PATH = "/api/v1/webhooks/stripe"
FILLER_PATH = "/api/v1/bench-no-such-path"  # a cheap 404 (see the wrk script)
PRICE_ID = "price_bench_monthly"
EVENT_TYPE = "customer.subscription.updated"
WARMUP_EVENTS = 200
PREFILL_CHUNK = 50_000
# Goals of issue 12.
GOAL_RATIO = 0.5
GOAL_P99_MS = 50.0
GOAL_LAG_P95_MS = 250.0
GOAL_BURST_EVENTS = 2000
GOAL_DRAIN_SECONDS = 10.0
# Bounds: no step of a run may hang the benchmark.
REQUEST_TIMEOUT_SECONDS = 30
SERVER_START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 20
WORKERS_SETTLE_SECONDS = 3


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# --------------------------------------------------------------------------
# Load generator: wrk with a script that sends every event of a file once
# --------------------------------------------------------------------------

# args: events file, thread count, directory for "thread finished" marks, path, filler path.
# Thread t sends events t, t + T, t + 2T, ... When it has had an answer to each, it writes a
# mark (the benchmark then stops wrk with SIGINT: wrk itself only stops after -d) and stops.
# Timestamps come from CLOCK_REALTIME (LuaJIT's FFI), comparable with the database's.
WRK_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
int clock_gettime(int clk_id, bench_timespec_t *tp);
]]
local clock = ffi.new("bench_timespec_t")
local function now()
  ffi.C.clock_gettime(0, clock)
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) / 1e9
end

local threads = {}
local created = 0
function setup(thread)
  thread:set("tid", created)
  created = created + 1
  table.insert(threads, thread)
end

local mine = {}
local marks, filler
local verified = false
total, sent, answered, ok, non2xx, filled, first, last = 0, 0, 0, 0, 0, 0, 0, 0
statuses = ""

function init(args)
  local nthreads = tonumber(args[2])
  marks = args[3]
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  local pos, index = 1, 0
  while pos <= #data do
    local newline = data:find("\n", pos, true)
    local signature, length = data:sub(pos, newline - 1):match("^(.-)\t(%d+)$")
    length = tonumber(length)
    if index % nthreads == tid then
      mine[#mine + 1] = wrk.format("POST", args[4], {
        ["Content-Type"] = "application/json; charset=utf-8",
        ["Stripe-Signature"] = signature,
      }, data:sub(newline + 1, newline + length))
    end
    pos = newline + length + 2
    index = index + 1
  end
  filler = wrk.format("GET", args[5])
  total = #mine
end

function request()
  if tid == 0 and not verified then
    verified = true -- wrk asks thread 0 for one request to check it; it is not sent
    return mine[1] or filler
  end
  if first == 0 then first = now() end
  sent = sent + 1
  if sent <= total then return mine[sent] end
  filled = filled + 1 -- rare: a connection woke while another sent the last event
  return filler
end

function delay()
  if sent >= total then return 600000 end -- idle until the thread stops
  return 0
end

local status_counts = {}
function response(status, headers, body)
  if status == 404 then return end -- a filler's answer
  answered = answered + 1
  if status >= 200 and status < 300 then
    ok = ok + 1
  else
    non2xx = non2xx + 1
    status_counts[status] = (status_counts[status] or 0) + 1
    local parts = {}
    for code, count in pairs(status_counts) do parts[#parts + 1] = code .. ":" .. count end
    statuses = table.concat(parts, ",")
  end
  if answered == total then
    last = now()
    local mark = assert(io.open(marks .. "/" .. tid, "w"))
    mark:write("done")
    mark:close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local out = {}
  for _, t in ipairs(threads) do
    out[#out + 1] = string.format(
      '{"total":%d,"sent":%d,"answered":%d,"ok":%d,"non2xx":%d,"filled":%d,' ..
      '"first":%.6f,"last":%.6f,"statuses":"%s"}',
      t:get("total"), t:get("sent"), t:get("answered"), t:get("ok"), t:get("non2xx"),
      t:get("filled"), t:get("first"), t:get("last"), t:get("statuses"))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"threads":[%s],"requests":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    table.concat(out, ","), summary.requests, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass
class LoadResult:
    """What the client saw of one batch of events."""

    events: int
    ok: int  # 2xx answers
    non2xx: int
    socket_errors: int
    statuses: str  # non-2xx answers by status
    first_sent: float  # epoch seconds
    last_answer: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_seconds: float = 0.0  # the load generator's own (user + system)

    @property
    def elapsed(self) -> float:
        """First request sent -> last answer received."""
        return max(self.last_answer - self.first_sent, 1e-9)

    @property
    def rate(self) -> float:
        """2xx answers per second."""
        return self.ok / self.elapsed


def require_wrk() -> str:
    """The wrk binary, or exit saying how to install it."""
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "benchmarks.webhooks needs wrk, the HTTP load generator: install it with "
            "`apt-get install -y wrk` (Debian/Ubuntu, as root or with sudo) or "
            "`brew install wrk` (macOS)."
        )
    return wrk


def write_events_file(path: Path, requests: list[tuple[bytes, str]]) -> None:
    """Events for the wrk script: per event `signature<TAB>length<LF>body<LF>`."""
    with path.open("wb") as out:
        for body, signature in requests:
            out.write(f"{signature}\t{len(body)}\n".encode() + body + b"\n")


def run_wrk(
    base_url: str,
    requests: list[tuple[bytes, str]],
    workdir: Path,
    connections: int,
    threads: int,
    timeout: float,
    on_start=None,
) -> LoadResult:
    """Send every request once with wrk; bounded by `timeout` seconds."""
    wrk = require_wrk()
    run_dir = Path(tempfile.mkdtemp(prefix="wrk-", dir=workdir))
    script, events, marks = run_dir / "fire.lua", run_dir / "events.txt", run_dir / "marks"
    script.write_text(WRK_SCRIPT)
    write_events_file(events, requests)
    marks.mkdir()
    threads = max(1, min(threads, connections, len(requests)))
    command = [
        wrk,
        *("-c", str(connections), "-t", str(threads)),
        *("-d", f"{int(timeout) + 1}s", "--timeout", f"{REQUEST_TIMEOUT_SECONDS}s"),
        "--latency",
        *("-s", str(script)),
        base_url,
        "--",
        *(str(events), str(threads), str(marks), ROUTE_PATH, FILLER_PATH),
    ]
    # wrk's CPU: what this process's children used while it ran (wrk is the only one reaped
    # meanwhile), so that every part sharing the cores is counted.
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with (run_dir / "wrk.out").open("w+") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            if on_start:
                on_start()
            deadline = time.monotonic() + timeout
            while len(list(marks.iterdir())) < threads and process.poll() is None:
                if time.monotonic() > deadline:
                    print(f"    warning: wrk did not finish in {timeout:.0f} s; stopping it")
                    break
                time.sleep(0.02)
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # wrk prints its summary and exits
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        output.seek(0)
        text = output.read()
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result:\n{text[-3000:]}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    per_thread = data["threads"]
    statuses: Counter[str] = Counter()
    for thread in per_thread:
        for part in filter(None, thread["statuses"].split(",")):
            code, count = part.split(":")
            statuses[code] += int(count)
    firsts = [t["first"] for t in per_thread if t["first"]]
    lasts = [t["last"] for t in per_thread if t["last"]]
    errors = data["errors"]
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(run_dir, ignore_errors=True)
    return LoadResult(
        events=len(requests),
        ok=sum(t["ok"] for t in per_thread),
        non2xx=sum(t["non2xx"] for t in per_thread),
        socket_errors=sum(errors.values()),
        statuses=",".join(f"{code}:{n}" for code, n in sorted(statuses.items())),
        first_sent=min(firsts, default=0.0),
        # A thread that never had all its answers has no `last`: then the run ended at
        # the timeout, and the rate over the answered ones is what there is.
        last_answer=max(lasts, default=0.0) if len(lasts) == len(per_thread) else time.time(),
        p50_ms=data["latency_us"]["p50"] / 1000,
        p99_ms=data["latency_us"]["p99"] / 1000,
        max_ms=data["latency_us"]["max"] / 1000,
        cpu_seconds=(children_after.ru_utime + children_after.ru_stime)
        - (children_before.ru_utime + children_before.ru_stime),
    )


# --------------------------------------------------------------------------
# Paced sender (runs in a child process): the steady rate
# --------------------------------------------------------------------------


@dataclass
class FireResult:
    """What the paced client saw: per-request latency (seconds), status, send time."""

    latencies: list[float]
    statuses: list[int]
    first_sent: float
    elapsed: float


def fire(
    port: int, path: str, requests: list[tuple[bytes, str]], connections: int, rate: float
) -> FireResult:
    """POST every (body, Stripe-Signature) to 127.0.0.1:port, request i at `i / rate` s.

    `connections` keep-alive http.client connections take the requests in order (a shared
    counter); a request whose time has not come waits for it. Status -1: no answer.
    """
    latencies = [0.0] * len(requests)
    statuses = [0] * len(requests)
    counter = itertools.count()  # next() on it is atomic under the GIL

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            while (index := next(counter)) < len(requests):
                body, signature = requests[index]
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

    workers = [threading.Thread(target=worker) for _ in range(connections)]
    first_sent = time.time()
    begin = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return FireResult(latencies, statuses, first_sent, time.perf_counter() - begin)


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SeededUser:
    """A user of the app with an active subscription (in the emulator and in our table)."""

    user_id: int
    customer_id: str
    subscription_id: str
    started: int  # epoch seconds


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
    """Signed events ready to send, and their ids."""

    requests: list[tuple[bytes, str]]
    ids: list[str]


@dataclass
class EventFactory:
    """Signed customer.subscription.updated events, round-robin over the seeded users.

    `created` goes up one second per event across every batch, all in the past (Stripe
    sends no future events). The app treats an event as a hint: it re-reads the
    subscription from Stripe (here the emulator) under the subscription's lock and applies
    that, so each event costs what a real one costs.
    """

    users: list[SeededUser]
    secret: str
    next_created: int
    _turn: int = 0

    def batch(self, prefix: str, count: int) -> EventBatch:
        """`count` events signed now (signatures are refused after five minutes)."""
        import stripe

        from subscription_app.billing.webhooks import sign

        batch = EventBatch([], [])
        for index in range(count):
            user = self.users[self._turn % len(self.users)]
            self._turn += 1
            event_id = f"evt_{prefix}_{index:06d}_{uuid.uuid4().hex[:8]}"
            event = {
                "id": event_id,
                "object": "event",
                "api_version": stripe.api_version,
                "created": self.next_created,
                "data": {
                    "object": subscription_object(user, "active", user.started),
                    "previous_attributes": {"cancel_at_period_end": False},
                },
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "type": EVENT_TYPE,
            }
            self.next_created += 1
            payload = json.dumps(event, indent=2, sort_keys=True)  # Stripe's layout
            batch.requests.append((payload.encode(), sign(payload, self.secret)))
            batch.ids.append(event_id)
        return batch


# --------------------------------------------------------------------------
# Processes: the app's workers and the bare server
# --------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time so far of these processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone: it counts for nothing
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy so far (every core, every process), in s."""
    # /proc/stat's first line: user nice system idle iowait irq softirq steal ... (in ticks)
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    """The PostgreSQL server's processes on this machine (its backends among them)."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _cmdline(int(entry.name)).startswith("postgres")
    ]


class CpuMeter:
    """CPU time used per event during a burst, by part: the server's workers (intake, the
    event loop, the HTTP server), their children (the webhook processors) and, on
    PostgreSQL, the database server. Steadier than the rate on a shared machine: it counts
    the work done, not how much of the machine the work got."""

    def __init__(self, parts: dict[str, Callable[[], list[int]]]) -> None:
        self.parts = parts
        self.start: dict[str, tuple[list[int], float]] = {}
        self.load_generator = 0.0  # set by the caller: wrk's own CPU (`LoadResult`)

    def __enter__(self) -> CpuMeter:
        for name, pids in self.parts.items():
            found = pids()
            self.start[name] = (found, cpu_seconds(found))
        self.machine_start = (machine_busy_seconds(), time.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, began = self.machine_start
        self.machine = machine_busy_seconds() - busy
        self.wall = time.monotonic() - began
        self.used = {
            name: cpu_seconds(pids) - before for name, (pids, before) in self.start.items()
        }

    def per_event_ms(self, events: int) -> dict[str, float]:
        """Milliseconds of CPU per event, per part; then the load generator's, and the whole
        machine's (every part, and anything else that ran): what the two cores had to do."""
        used = {**self.used, "load_generator": self.load_generator, "machine": self.machine}
        return {name: round(1000 * cpu / max(events, 1), 3) for name, cpu in used.items()}

    def utilization(self) -> float:
        """The machine's busy share of all its cores over the burst (1.0: every core busy)."""
        return round(self.machine / max(self.wall * (os.cpu_count() or 1), 1e-9), 3)


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _workers_of(server_pid: int) -> list[int]:
    """granian's worker processes: the server process's Python children."""
    return [
        pid
        for pid in _children(server_pid)
        if "python" in _cmdline(pid) and "resource_tracker" not in _cmdline(pid)
    ]


def _settled_workers(server_pid: int) -> list[int]:
    """The workers once their count has held still for a few seconds (bounded)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    workers, since = _workers_of(server_pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = _workers_of(server_pid)
        if sorted(now) != sorted(workers):
            workers, since = now, time.monotonic()
        elif workers and time.monotonic() - since >= WORKERS_SETTLE_SECONDS:
            break
    return workers


def app_server_pid(launcher_pid: int) -> int:
    """The `reflex run` process (granian's server) under `python -m devtools.run`."""
    for pid in _children(launcher_pid):
        if "reflex run" in _cmdline(pid):
            return pid
    raise RuntimeError("no `reflex run` process under the launcher")


@dataclass
class BareServer:
    """`benchmarks.bare_webhook:app` on granian with a given number of workers."""

    process: subprocess.Popen
    port: int
    workers: list[int]
    log_path: Path

    @classmethod
    def start(cls, workers: int, secret: str, workdir: Path) -> BareServer:
        """Start it and wait until every worker is up (bounded)."""
        from devtools.liveapp import free_port

        port = free_port()
        log_path = workdir / "bare.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "GRANIAN_"))}
        env["STRIPE_WEBHOOK_SECRET"] = secret
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "granian", "--interface", "asgi"),
                    *("--workers", str(workers)),
                    *("--host", "127.0.0.1", "--port", str(port)),
                    *("--log-level", "warning"),
                    "benchmarks.bare_webhook:app",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(process, port, [], log_path)
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the bare server exited:\n{log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the bare server did not start:\n{log_path.read_text()}")
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                try:
                    connection.request("POST", ROUTE_PATH, body=b"{}")
                    if connection.getresponse().status == 400:  # no signature: it is up
                        break
                except OSError:
                    pass
                finally:
                    connection.close()
                time.sleep(0.2)
            server.workers = _settled_workers(process.pid)
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        """SIGINT (granian's graceful stop), then SIGKILL to the group if it lingers."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# How py-spy's samples are told apart: the processor's stacks (claiming included) first.
PROCESSOR_MODULES = (
    "subscription_app/billing/processor.py",
    "subscription_app/billing/handlers.py",
)
INTAKE_MODULES = (
    "subscription_app/api/webhooks.py",
    "subscription_app/billing/intake.py",
    "subscription_app/billing/inbox.py",
)


class PySpy:
    """py-spy sampling every app worker while a burst runs (optional, --py-spy DIR)."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        self.process = subprocess.Popen(
            [
                *("py-spy", "record", "--pid", str(pid), "--subprocesses", "--nonblocking"),
                *("--rate", "200", "--duration", "600", "--format", "raw"),
                *("--output", str(output)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """Ctrl-C: py-spy writes what it sampled and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def top_frames(self, count: int = 10) -> dict[str, Any]:
        """Where the samples went: intake (the route and the store it calls, in any thread),
        the processor, or anything else; per part, the innermost frames (self) and the
        app's own frames on the stack (app), as % of that part's samples."""
        parts: dict[str, tuple[Counter[str], Counter[str]]] = {}
        totals: Counter[str] = Counter()
        if not self.output.exists():
            return {}
        for line in self.output.read_text(errors="replace").splitlines():
            stack, _, samples = line.rpartition(" ")
            if not samples.isdigit():
                continue
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            if not frames:
                continue
            n = int(samples)
            if any(module in f for f in frames for module in PROCESSOR_MODULES):
                part = "processor"
            elif any(module in f for f in frames for module in INTAKE_MODULES):
                part = "intake"
            else:
                part = "other"  # event loops, granian's own threads, the supervisor
            totals[part] += n
            own, app = parts.setdefault(part, (Counter(), Counter()))
            own[frames[-1]] += n
            for frame in set(frames):
                if "subscription_app/" in frame:
                    app[frame] += n
        everything = sum(totals.values())
        summary: dict[str, Any] = {
            "samples": everything,
            "parts_pct": {p: round(100 * n / everything, 1) for p, n in totals.most_common()},
        }
        for part, (own, app) in parts.items():
            if part == "other":
                continue
            scale = 100 / totals[part]
            summary[part] = {
                "self": [(f, round(n * scale, 1)) for f, n in own.most_common(count)],
                "app": [(f, round(n * scale, 1)) for f, n in app.most_common(count)],
            }
        return summary


# --------------------------------------------------------------------------
# The app's database: configure, migrate, seed, prefill, read
# --------------------------------------------------------------------------


def configure(env: dict[str, str]) -> None:
    """Point this process's settings, engine and keys at the app's database and keys."""
    from subscription_app import db
    from subscription_app.billing import catalog, client
    from subscription_app.settings import Settings, get_settings

    Settings.model_config["env_file"] = None  # only our environment, never a local .env
    for name in list(os.environ):
        if name.startswith(("STRIPE_", "APP_")) or name in {"DATABASE_URL", "REDIS_URL"}:
            del os.environ[name]
    os.environ.update(env)
    get_settings.cache_clear()
    db.get_engine.cache_clear()
    client.get_client.cache_clear()
    catalog.forget_default_price()


def migrate(database_url: str) -> None:
    """The app's own migrations (its start then finds nothing to do)."""
    from alembic import command
    from subscription_app.migrate import alembic_config

    config = alembic_config(database_url)
    config.attributes["configure_logger"] = False  # keep alembic's INFO lines out
    command.upgrade(config, "head")


def seed(count: int, stripe_api_base: str) -> list[SeededUser]:
    """`count` users subscribed through the app's own subscribe path (`start_subscription`),
    against the app's emulator: customer, card, subscription, our row, as a person's
    subscribe makes them (less the password hash: nobody logs in)."""
    import stripe

    from subscription_app.billing import service
    from subscription_app.db import session_scope
    from subscription_app.models import User

    sdk = stripe.StripeClient("sk_test_local_emulator", base_addresses={"api": stripe_api_base})
    users = []
    for index in range(count):
        with session_scope() as session:
            user = User(
                email=f"bench-{index}-{uuid.uuid4().hex[:8]}@example.com", password_hash="!"
            )
            session.add(user)
            session.commit()
            card = sdk.v1.payment_methods.create(
                params={"type": "card", "card": {"token": "tok_visa"}}
            )
            result = service.start_subscription(
                session=session, user=user, payment_method_id=card.id
            )
            view = result.subscription
            if result.status != "active" or view is None:
                raise RuntimeError(f"seeding: subscribe answered {result.status}")
            assert user.id is not None
            customer = service.ensure_customer(session=session, user=user)
        subscription = sdk.v1.subscriptions.list(params={"customer": customer, "limit": 1}).data[0]
        users.append(SeededUser(user.id, customer, subscription.id, subscription.created))
    return users


def wait_inbox_settled(engine, timeout: float) -> int:
    """Wait (bounded) until no inbox event has been pending for two seconds; pending left."""
    import sqlalchemy as sa

    query = sa.text("SELECT count(*) FROM stripe_event WHERE status = 'pending'")
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            pending = conn.execute(query).scalar()
        if pending:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 2:
            return 0
        time.sleep(0.2)
    return pending or 0


# The inbox columns the prefill fills; any other column must be nullable or have a default.
PREFILL_COLUMNS = (
    "event_id",
    "type",
    "stripe_created_at",
    "livemode",
    "payload_enc",
    "status",
    "attempts",
    "next_attempt_at",
    "received_at",
    "processed_at",
)


def prefill_inbox(engine, rows: int, oldest: datetime) -> None:
    """Insert `rows` processed events ('done', processed_at set) dated from `oldest` on.

    One small valid payload (a minimal event, encrypted with the app's key) is shared by
    every row: the table's size in rows and index entries is the point, not its bytes.
    """
    import sqlalchemy as sa

    from subscription_app import crypto

    table = sa.Table("stripe_event", sa.MetaData(), autoload_with=engine)
    missing = [
        c.name
        for c in table.columns
        if c.name not in PREFILL_COLUMNS
        and not c.nullable
        and c.server_default is None
        and not (c.primary_key and c.autoincrement in (True, "auto"))
    ]
    if missing:
        raise RuntimeError(f"stripe_event has columns the prefill cannot fill: {missing}")
    created = int(oldest.timestamp()) - 3600
    blob = crypto.encrypt(
        json.dumps(
            {"id": "evt_prefill", "object": "event", "type": EVENT_TYPE, "created": created}
        ),
        purpose=crypto.Purpose.EVENT_PAYLOAD,
    )
    step = timedelta(seconds=1)
    if engine.dialect.name == "postgresql":
        insert = sa.text(
            "INSERT INTO stripe_event (event_id, type, stripe_created_at, livemode, payload_enc,"
            " status, attempts, next_attempt_at, received_at, processed_at)"
            " SELECT 'evt_prefill_' || lpad(g::text, 8, '0'), :type, t - interval '1 hour',"
            " false, :blob, 'done', 1, t, t, t + interval '40 milliseconds'"
            " FROM (SELECT g, CAST(:oldest AS timestamptz) + g * interval '1 second' AS t"
            "       FROM generate_series(CAST(:low AS integer), CAST(:high AS integer)) g) s"
        )
        for low in range(0, rows, PREFILL_CHUNK):
            high = min(rows, low + PREFILL_CHUNK) - 1
            with engine.begin() as conn:
                conn.execute(
                    insert,
                    {"type": EVENT_TYPE, "blob": blob, "oldest": oldest, "low": low, "high": high},
                )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE stripe_event"))
        return

    def stamp(moment: datetime) -> str:  # SQLAlchemy's DateTime format on SQLite
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")

    insert_sql = (
        "INSERT INTO stripe_event (event_id, type, stripe_created_at, livemode, payload_enc,"
        " status, attempts, next_attempt_at, received_at, processed_at)"
        " VALUES (?, ?, ?, 0, ?, 'done', 1, ?, ?, ?)"
    )
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for low in range(0, rows, PREFILL_CHUNK):
            chunk = []
            for g in range(low, min(rows, low + PREFILL_CHUNK)):
                at = oldest + g * step
                received = stamp(at)
                chunk.append(
                    (
                        f"evt_prefill_{g:08d}",
                        EVENT_TYPE,
                        stamp(at - timedelta(hours=1)),
                        blob,
                        received,
                        received,
                        stamp(at + timedelta(milliseconds=40)),
                    )
                )
            cursor.executemany(insert_sql, chunk)
            raw.commit()
        cursor.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()


def _in_chunks(ids: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


@dataclass
class EventRow:
    """What the benchmark reads of one inbox row."""

    status: str
    received_at: datetime
    processed_at: datetime | None

    @property
    def processed(self) -> bool:
        """No longer pending, and stamped."""
        return self.status != "pending" and self.processed_at is not None


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def read_events(engine, ids: list[str]) -> dict[str, EventRow]:
    """The inbox rows of `ids` (only the columns the benchmark relies on)."""
    import sqlalchemy as sa

    table = sa.table(
        "stripe_event",
        sa.column("event_id", sa.String),
        sa.column("status", sa.String),
        sa.column("received_at", sa.DateTime(timezone=True)),
        sa.column("processed_at", sa.DateTime(timezone=True)),
    )
    rows: dict[str, EventRow] = {}
    with engine.connect() as conn:
        for chunk in _in_chunks(ids):
            query = sa.select(
                table.c.event_id, table.c.status, table.c.received_at, table.c.processed_at
            ).where(table.c.event_id.in_(chunk))
            for event_id, status, received, processed in conn.execute(query):
                received_at = _aware(received)
                assert received_at is not None
                rows[event_id] = EventRow(status, received_at, _aware(processed))
    return rows


def wait_processed(engine, ids: list[str], timeout: float) -> dict[str, EventRow]:
    """Poll (bounded) until every one of `ids` is stored and processed; the rows then."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read_events(engine, ids)
        done = sum(1 for row in rows.values() if row.processed)
        if done == len(ids) or time.monotonic() > deadline:
            if done < len(ids):
                print(f"    warning: {len(ids) - done} events not processed after {timeout:.0f} s")
            return rows
        time.sleep(0.2)


def count_active_rows(engine, users: list[SeededUser]) -> int:
    """How many seeded users' subscription rows say active, as the emulator does."""
    import sqlalchemy as sa

    seeded = {user.user_id for user in users}
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT user_id, status FROM subscription")).all()
    return sum(1 for user_id, status in rows if user_id in seeded and status == "active")


# --------------------------------------------------------------------------
# One run: one database, one inbox size
# --------------------------------------------------------------------------


def stripe_calls(log_path: Path, start: float, end: float) -> dict[str, Any]:
    """The app's Stripe (emulator) calls that started in [start, end]: count, p50/p95 ms."""
    durations = []
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            began, elapsed, *_ = line.split()
            if start <= float(began) <= end:
                durations.append(float(elapsed))
    return {
        "calls": len(durations),
        "p50_ms": round(percentile(durations, 50), 1),
        "p95_ms": round(percentile(durations, 95), 1),
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def burst_figures(run: Run, load: LoadResult, rows: dict[str, EventRow]) -> dict[str, Any]:
    """Intake and drain figures of a burst sent to the app."""
    processed = [row.processed_at for row in rows.values() if row.processed and row.processed_at]
    lags = [
        (row.processed_at - row.received_at).total_seconds()
        for row in rows.values()
        if row.processed and row.processed_at
    ]
    all_done = len(processed) == load.events
    last_processed = max(processed).timestamp() if processed else None
    return {
        **intake_figures(load),
        "stored": len(rows),
        "processed": len(processed),
        "statuses": dict(Counter(row.status for row in rows.values())),
        "drain_s": round(last_processed - load.first_sent, 2)
        if all_done and last_processed
        else None,
        "drain_after_last_answer_s": round(last_processed - load.last_answer, 2)
        if all_done and last_processed
        else None,
        "lag_p50_ms": _ms(percentile(lags, 50)),
        "lag_p99_ms": _ms(percentile(lags, 99)),
        "stripe": stripe_calls(run.timing_log, load.first_sent, last_processed or load.last_answer),
    }


def intake_figures(load: LoadResult) -> dict[str, Any]:
    """What the client saw of a burst."""
    return {
        "events": load.events,
        "ok": load.ok,
        "non2xx": load.non2xx,
        "non2xx_by_status": load.statuses,
        "socket_errors": load.socket_errors,
        "seconds": round(load.elapsed, 3),
        "rate": round(load.rate, 1),
        "p50_ms": round(load.p50_ms, 2),
        "p99_ms": round(load.p99_ms, 2),
        "max_ms": round(load.max_ms, 2),
    }


@dataclass
class Run:
    """Everything one run needs while it lasts."""

    backend: str
    args: argparse.Namespace
    workdir: Path
    base_url: str
    port: int
    engine: Any
    factory: EventFactory
    bare_factory: EventFactory
    server_pid: int
    profile_dir: Path | None
    timing_log: Path
    bare_workers: list[int]

    def wrk(self, url: str, batch: EventBatch, on_start=None) -> LoadResult:
        """A burst through wrk, bounded by a generous time for the slowest target."""
        timeout = 60 + len(batch.requests) / 20
        return run_wrk(
            url,
            batch.requests,
            self.workdir,
            self.args.connections,
            self.args.threads,
            timeout,
            on_start,
        )


def bench_run(backend: str, inbox_rows: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start everything for one database and inbox size, measure, stop everything."""
    from devtools.liveapp import start_live_app
    from subscription_app import crypto, db
    from subscription_app.settings import Settings

    secret = "whsec_bench_" + secrets.token_hex(16)
    keys = {
        "APP_ENV": "development",
        "APP_SECRET_KEY": secrets.token_urlsafe(48),
        "APP_ENCRYPTION_KEYS": crypto.generate_key(),
        "APP_BLIND_INDEX_KEY": crypto.generate_key(),
        "STRIPE_WEBHOOK_SECRET": secret,
    }
    result: dict[str, Any] = {"database": backend, "inbox_rows": inbox_rows, "users": args.users}
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-webhooks-")))
        if backend == "sqlite":
            database_url = f"sqlite:///{workdir / 'app.db'}"
            extra: dict[str, str] = {}
        else:
            from devtools.pgschema import fresh_schema

            database_url = stack.enter_context(fresh_schema(args.postgres, prefix="bench"))
            extra = {"REDIS_URL": args.redis}
            if args.workers:
                extra["GRANIAN_WORKERS"] = str(args.workers)
        env = {**keys, "DATABASE_URL": database_url}
        configure(env)
        migrate(database_url)
        if inbox_rows:
            print(f"  prefilling the inbox with {inbox_rows:,} processed events...", flush=True)
            clock = time.monotonic()
            oldest = datetime.now(UTC) - timedelta(seconds=inbox_rows, days=2)
            prefill_inbox(db.get_engine(), inbox_rows, oldest)
            timings["prefill_s"] = time.monotonic() - clock
        db.get_engine().dispose()
        reader = stack.enter_context(_engine(Settings(database_url=database_url).sqlalchemy_url))

        print("  starting the app (python -m devtools.run)...", flush=True)
        clock = time.monotonic()
        timing_log = workdir / "stripe-timing.log"
        app = start_live_app(
            workdir / "app",
            **env,
            **extra,
            STRIPE_TIMING_LOG=str(timing_log),  # one line per Stripe call the app makes
            REFLEX_WEB_WORKDIR=str(workdir / "web"),  # its own build: another app may run
        )
        stack.callback(app.stop)
        timings["app_start_s"] = time.monotonic() - clock

        print(f"  seeding {args.users} subscribed users...", flush=True)
        clock = time.monotonic()
        configure(
            {
                **env,
                "STRIPE_SECRET_KEY": "sk_test_local_emulator",
                "STRIPE_PUBLISHABLE_KEY": "pk_test_local_emulator",
                "STRIPE_API_BASE": app.stripe_api_base,
            }
        )
        users = seed(args.users, app.stripe_api_base)
        db.get_engine().dispose()
        # The emulator's own webhooks about them (customer, subscription, invoice events).
        if pending := wait_inbox_settled(reader, args.drain_timeout):
            print(f"    warning: {pending} of the emulator's events still pending")
        timings["seed_s"] = time.monotonic() - clock

        server_pid = app_server_pid(app.process.pid)
        app_workers = _settled_workers(server_pid)
        print(f"  app: {len(app_workers)} granian worker(s); starting the bare app...", flush=True)
        bare = BareServer.start(len(app_workers), secret, workdir)
        stack.callback(bare.stop)
        result.update(
            app_workers=len(app_workers), bare_workers=len(bare.workers), redis=bool(extra)
        )
        if len(bare.workers) != len(app_workers):
            print(f"    warning: bare app has {len(bare.workers)} workers")

        steady_events = int(args.steady_rate * args.steady_seconds)
        planned = 2 * WARMUP_EVENTS + args.events + args.burst + steady_events
        first_created = int(time.time()) - planned - 120
        run = Run(
            backend=backend,
            args=args,
            workdir=workdir,
            base_url=app.url,
            port=int(app.url.rsplit(":", 1)[1]),
            engine=reader,
            factory=EventFactory(users, secret, first_created),
            bare_factory=EventFactory(users, secret, first_created),
            server_pid=server_pid,
            profile_dir=args.py_spy,
            timing_log=timing_log,
            bare_workers=bare.workers,
        )
        bare_url = f"http://127.0.0.1:{bare.port}"
        clock = time.monotonic()
        result.update(measure(run, bare_url))
        timings["measure_s"] = time.monotonic() - clock
        result["rows_active"] = count_active_rows(reader, users)
        result["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    return result


@contextlib.contextmanager
def _engine(url: str) -> Iterator[Any]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _intake_round(run: Run, bare_url: str, turn: int) -> dict[str, Any]:
    """One intake round: a burst to the bare app, then one to the app, fully processed
    before it returns (so the next round's bare burst does not share the CPU with it)."""
    args, tag = run.args, "" if turn == 0 else f"{turn + 1}"
    label = f" (round {turn + 1} of {args.rounds})" if args.rounds > 1 else ""
    print(f"  intake{label}: {args.events} events to the bare app, then to the app...", flush=True)
    bare_batch = run.bare_factory.batch(f"bare{tag}", args.events)
    with CpuMeter({"workers": lambda: run.bare_workers}) as bare_cpu:
        bare = run.wrk(bare_url, bare_batch)
    bare_cpu.load_generator = bare.cpu_seconds
    out: dict[str, Any] = {"bare": intake_figures(bare)}
    out["bare"]["cpu_ms_per_event"] = bare_cpu.per_event_ms(args.events)
    out["bare"]["machine_busy"] = bare_cpu.utilization()
    batch = run.factory.batch(f"burst{tag}", args.events)
    profiler: list[PySpy] = []

    def start_profiler() -> None:
        if run.profile_dir and turn == 0:
            run.profile_dir.mkdir(parents=True, exist_ok=True)
            raw = run.profile_dir / f"webhooks-{run.backend}-{int(time.time())}.txt"
            profiler.append(PySpy(run.server_pid, raw))

    workers = _workers_of(run.server_pid)
    parts = {
        "workers": lambda: workers,
        "processors": lambda: [child for pid in workers for child in _children(pid)],
    }
    if run.backend == "postgresql":
        parts["postgres"] = postgres_pids
    try:
        with CpuMeter(parts) as app_cpu:
            load = run.wrk(run.base_url, batch, on_start=start_profiler)
    finally:
        for spy in profiler:
            spy.stop()
    app_cpu.load_generator = load.cpu_seconds
    rows = wait_processed(run.engine, batch.ids, args.drain_timeout)
    out["app"] = burst_figures(run, load, rows)
    out["app"]["cpu_ms_per_event"] = app_cpu.per_event_ms(args.events)
    out["app"]["machine_busy"] = app_cpu.utilization()
    out["ratio"] = round(load.rate / bare.rate, 3) if bare.rate else 0.0
    if profiler:
        out["py_spy"] = {"file": str(profiler[0].output), **profiler[0].top_frames()}
    return out


def measure(run: Run, bare_url: str) -> dict[str, Any]:
    """The phases: warm-up, intake bursts, drain burst, steady rate."""
    args, drain_timeout = run.args, run.args.drain_timeout
    out: dict[str, Any] = {}

    print("  warm-up...", flush=True)
    run.wrk(bare_url, run.bare_factory.batch("barewarm", WARMUP_EVENTS))
    warm = run.factory.batch("warm", WARMUP_EVENTS)
    run.wrk(run.base_url, warm)
    wait_processed(run.engine, warm.ids, drain_timeout)

    rounds: list[dict[str, Any]] = []
    for turn in range(args.rounds):
        rounds.append(_intake_round(run, bare_url, turn))
    # The round with the median ratio stands for the run (its rates, CPU, latency and lag);
    # every round's figures are kept beside it.
    ranked = sorted(range(len(rounds)), key=lambda i: rounds[i]["ratio"])
    middle = rounds[ranked[(len(ranked) - 1) // 2]]
    out.update(bare=middle["bare"], app=middle["app"], ratio=middle["ratio"])
    if len(rounds) > 1:
        out["rounds"] = rounds
    if "py_spy" in rounds[0]:
        out["py_spy"] = rounds[0]["py_spy"]

    if args.burst and args.burst != args.events:
        print(f"  drain: a burst of {args.burst} events to the app...", flush=True)
        batch = run.factory.batch("drain", args.burst)
        load = run.wrk(run.base_url, batch)
        rows = wait_processed(run.engine, batch.ids, drain_timeout)
        out["drain_burst"] = burst_figures(run, load, rows)
    else:
        out["drain_burst"] = out["app"]

    if args.steady_rate and args.steady_seconds:
        count = int(args.steady_rate * args.steady_seconds)
        print(f"  steady: {count} events at {args.steady_rate:g}/s...", flush=True)
        batch = run.factory.batch("steady", count)
        context = multiprocessing.get_context("spawn")  # no copy of our threads or engines
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            job = pool.submit(
                fire, run.port, ROUTE_PATH, batch.requests, args.connections, args.steady_rate
            )
            paced = job.result(timeout=args.steady_seconds * 2 + 120)
        rows = wait_processed(run.engine, batch.ids, drain_timeout)
        answered = [
            lat * 1000
            for lat, status in zip(paced.latencies, paced.statuses, strict=True)
            if 200 <= status < 300
        ]
        lags = [
            (row.processed_at - row.received_at).total_seconds() * 1000
            for row in rows.values()
            if row.processed and row.processed_at
        ]
        out["steady"] = {
            "rate_target": args.steady_rate,
            "events": count,
            "ok": len(answered),
            "non2xx": sum(1 for s in paced.statuses if not 200 <= s < 300),
            "rate": round(len(answered) / paced.elapsed, 1) if paced.elapsed else 0.0,
            "p50_ms": round(percentile(answered, 50), 2),
            "p99_ms": round(percentile(answered, 99), 2),
            "stored": len(rows),
            "processed": len(lags),
            "statuses": dict(Counter(row.status for row in rows.values())),
            "lag_p50_ms": round(percentile(lags, 50), 1),
            "lag_p95_ms": round(percentile(lags, 95), 1),
            "lag_max_ms": round(max(lags, default=0.0), 1),
            "stripe": stripe_calls(run.timing_log, paced.first_sent, time.time()),
        }
    return out


# --------------------------------------------------------------------------
# Goals, report, results file
# --------------------------------------------------------------------------


def _lossless(figures: dict[str, Any]) -> bool:
    return (
        figures["ok"] == figures["events"]
        and figures.get("stored", figures["events"]) == figures["events"]
        and figures.get("processed", figures["events"]) == figures["events"]
        and not figures.get("statuses", {}).get("failed")
        and not figures.get("socket_errors")
    )


def goals(result: dict[str, Any]) -> dict[str, bool | None]:
    """Issue 12's goals for one run (None: not measured in this run)."""
    app, drain, steady = result["app"], result["drain_burst"], result.get("steady")
    drain_ok: bool | None = None
    if drain["events"] == GOAL_BURST_EVENTS and drain["drain_s"] is not None:
        drain_ok = drain["drain_s"] <= GOAL_DRAIN_SECONDS
    elif drain["events"] == GOAL_BURST_EVENTS:
        drain_ok = False  # never fully processed
    return {
        "ratio>=0.5": result["ratio"] >= GOAL_RATIO,
        "p99<50ms": app["p99_ms"] < GOAL_P99_MS,
        "nothing lost": all(
            _lossless(f)
            for f in (
                app,
                drain,
                *([steady] if steady else []),
                *(r["app"] for r in result.get("rounds", ())),
            )
        ),
        "lag p95<250ms": steady["lag_p95_ms"] < GOAL_LAG_P95_MS if steady else None,
        "2000 drained<=10s": drain_ok,
    }


def _mark(value: bool | None) -> str:
    return {True: "ok", False: "FAIL", None: "-"}[value]


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _stripe(figures: dict[str, Any]) -> str:
    calls = figures["stripe"]
    return (
        f"{calls['calls']} Stripe calls, p50 {calls['p50_ms']:.0f} / p95 {calls['p95_ms']:.0f} ms"
    )


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    """The table of one run."""
    app, bare, drain = result["app"], result["bare"], result["drain_burst"]
    name = "PostgreSQL + Redis" if result["database"] == "postgresql" else "SQLite"
    lines = [
        "",
        f"{name}, inbox prefilled with {result['inbox_rows']:,} processed events: "
        f"app {result['app_workers']} granian worker(s), bare {result['bare_workers']}; "
        f"wrk -c {args.connections} -t {args.threads}; {result['users']} subscriptions",
        f"  {'intake burst':<34} {'sent':>6} {'2xx':>6} {'non2xx':>6} {'stored':>6} "
        f"{'events/s':>9} {'p50 ms':>7} {'p99 ms':>7}",
    ]
    for label, fig in (("app (Reflex, every middleware)", app), ("bare (verify only)", bare)):
        non2xx = fig["non2xx"] + fig["socket_errors"]
        lines.append(
            f"  {label:<34} {fig['events']:>6} {fig['ok']:>6} {non2xx:>6} "
            f"{fig.get('stored', '-')!s:>6} {fig['rate']:>9.0f} {fig['p50_ms']:>7.1f} "
            f"{fig['p99_ms']:>7.1f}"
        )
    rounds = result.get("rounds")
    each = ", ".join(f"{r['ratio']:.2f}" for r in rounds) if rounds else ""
    median = f" (the median of {len(rounds)} rounds: {each})" if rounds else ""
    lines.append(f"  ratio app/bare: {result['ratio']:.2f}{median}")
    if "cpu_ms_per_event" in app and "cpu_ms_per_event" in bare:
        for name, fig in (("app", app), ("bare", bare)):
            used = ", ".join(f"{part} {ms:.3f}" for part, ms in fig["cpu_ms_per_event"].items())
            busy = ""
            if "machine_busy" in fig:
                busy = f" (machine {100 * fig['machine_busy']:.0f}% busy)"
            lines.append(f"  CPU ms per event, {name}: {used}{busy}")
    for label, fig in (("intake burst", app), ("drain burst", drain)):
        if label == "drain burst" and drain is app:
            continue
        lines.append(
            f"  {label} of {fig['events']}: first sent -> all processed {_s(fig['drain_s'])} s "
            f"(sending took {fig['seconds']:.2f} s, then {_s(fig['drain_after_last_answer_s'])}"
            f" s more); {fig['processed']}/{fig['events']} processed {fig['statuses']}; "
            f"lag p50 {fig['lag_p50_ms']:.0f} ms, p99 {fig['lag_p99_ms']:.0f} ms; "
            f"{_stripe(fig)}"
        )
    steady = result.get("steady")
    if steady:
        lines.append(
            f"  steady {steady['rate_target']:g}/s: {steady['events']} sent, {steady['ok']} 2xx "
            f"({steady['rate']:.1f}/s), answers p50 {steady['p50_ms']:.1f} / p99 "
            f"{steady['p99_ms']:.1f} ms; lag receipt -> applied p50 {steady['lag_p50_ms']:.0f}, "
            f"p95 {steady['lag_p95_ms']:.0f}, max {steady['lag_max_ms']:.0f} ms; "
            f"{steady['processed']}/{steady['events']} processed {steady['statuses']}; "
            f"{_stripe(steady)}"
        )
    lines.append(
        f"  seeded subscriptions whose row still says active (as Stripe does): "
        f"{result['rows_active']}/{result['users']}"
    )
    lines.append(
        "  goals: " + ", ".join(f"{goal} {_mark(ok)}" for goal, ok in result["goals"].items())
    )
    spy = result.get("py_spy")
    if spy and spy.get("samples"):
        parts = ", ".join(f"{part} {pct:.0f}%" for part, pct in spy["parts_pct"].items())
        lines.append(
            f"  py-spy, every app worker during the intake burst ({spy['samples']} samples: "
            f"{parts}); raw stacks in {spy['file']}"
        )
        for part in ("intake", "processor"):
            for kind in ("app", "self"):
                if part in spy:
                    lines.append(f"    {part}, {kind} frames (% of {part} samples):")
                    lines.extend(f"      {pct:5.1f}  {frame}" for frame, pct in spy[part][kind])
    return "\n".join(lines)


def summary(results: list[dict[str, Any]]) -> str:
    """One line per run, side by side."""
    lines = [
        "",
        "Summary (events/s of 2xx answers; latency, lag in ms; drain in s)",
        f"  {'database':<10} {'inbox':>9} {'wk':>2} {'app/s':>6} {'bare/s':>6} {'ratio':>5} "
        f"{'p50':>5} {'p99':>5} {'lost':>4} {'lag p95':>7} {'drain':>6}  goals",
    ]
    for r in results:
        app, steady, drain = r["app"], r.get("steady"), r["drain_burst"]
        lost = sum(
            f["events"] - min(f["ok"], f.get("stored", f["ok"]), f.get("processed", f["ok"]))
            for f in (app, drain, *([steady] if steady else []))
        )
        lag = f"{steady['lag_p95_ms']:.0f}" if steady else "-"
        failed = [goal for goal, ok in r["goals"].items() if ok is False]
        lines.append(
            f"  {r['database']:<10} {r['inbox_rows']:>9,} {r['app_workers']:>2} "
            f"{app['rate']:>6.0f} {r['bare']['rate']:>6.0f} {r['ratio']:>5.2f} "
            f"{app['p50_ms']:>5.1f} {app['p99_ms']:>5.1f} {lost:>4} {lag:>7} "
            f"{_s(drain['drain_s']):>6}  {'FAIL: ' + ', '.join(failed) if failed else 'all met'}"
        )
    return "\n".join(lines)


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    """Where and on what the figures were taken."""
    import sqlite3

    info = describe(("reflex", "granian", "stripe", "sqlalchemy", "psycopg", "psycopg2-binary"))
    versions = info["versions"]
    versions["sqlite"] = sqlite3.sqlite_version
    versions["wrk"] = next(iter(run_text(["wrk", "-v"]).splitlines()), "")
    if args.postgres and "postgresql" in args.databases:
        import sqlalchemy as sa

        from subscription_app.settings import Settings

        url = Settings(database_url=args.postgres).sqlalchemy_url
        with _engine(url) as engine, engine.connect() as conn:
            versions["postgresql"] = conn.execute(sa.text("SHOW server_version")).scalar()
    dirty = run_text(["git", "status", "--porcelain"]).splitlines()
    return {
        **info,
        "git_commit": run_text(["git", "rev-parse", "HEAD"]),
        "git_uncommitted_changes": [line[3:] for line in dirty],
    }


def write_results(path: Path, machine: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """Merge this invocation's runs into the results file (same database and inbox: replaced)."""
    runs: list[dict[str, Any]] = []
    kept: dict[str, Any] = {}  # earlier_runs and A/B tables, added by hand for comparison
    if path.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            previous = json.loads(path.read_text())
            kept = {k: v for k, v in previous.items() if k not in {"benchmark", "goals", "runs"}}
            runs = list(previous["runs"])
    fresh = {(r["database"], r["inbox_rows"]) for r in results}
    runs = [r for r in runs if (r.get("database"), r.get("inbox_rows")) not in fresh]
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    runs.extend({**r, "measured_at": stamp, "machine": machine} for r in results)
    runs.sort(key=lambda r: (r["database"] != "sqlite", r["inbox_rows"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "benchmarks/webhooks.py",
        "goals": {
            "ratio_min": GOAL_RATIO,
            "p99_ms_max": GOAL_P99_MS,
            "steady_lag_p95_ms_max": GOAL_LAG_P95_MS,
            "burst_events": GOAL_BURST_EVENTS,
            "burst_drain_s_max": GOAL_DRAIN_SECONDS,
        },
        "runs": runs,
        **kept,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def main() -> None:
    """Run every database and inbox size asked for; print the tables; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--databases",
        nargs="+",
        choices=["sqlite", "postgresql"],
        default=None,
        help="default: sqlite, and postgresql when its URL is known",
    )
    parser.add_argument("--events", type=int, default=2000, help="intake burst (2000)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="intake rounds, bare then app each, the median ratio's round reported (3)",
    )
    parser.add_argument("--burst", type=int, default=GOAL_BURST_EVENTS, help="drain burst (2000)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections (8)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--users", type=int, default=200, help="seeded subscriptions (200)")
    parser.add_argument("--steady-rate", type=float, default=100, help="events/s (100; 0: skip)")
    parser.add_argument("--steady-seconds", type=float, default=20, help="seconds (20)")
    parser.add_argument(
        "--inbox-rows",
        type=int,
        nargs="+",
        default=[0],
        help="processed events already in the inbox, one run each (0; e.g. 0 1000000)",
    )
    parser.add_argument("--drain-timeout", type=float, default=180, help="seconds (180)")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TEST_DATABASE_URL"),
        help="PostgreSQL URL (default $TEST_DATABASE_URL); a fresh schema, dropped after",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL"),
        help="Redis URL for the PostgreSQL runs (default $TEST_REDIS_URL or $REDIS_URL)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="PostgreSQL runs: the app's worker count (GRANIAN_WORKERS; default one per CPU)",
    )
    parser.add_argument(
        "--py-spy", type=Path, default=None, help="record the app's workers into DIR (py-spy)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON ({RESULTS.name})")
    args = parser.parse_args()
    if args.workers is not None and not 1 <= args.workers <= 64:
        parser.error("--workers must be between 1 and 64")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    for name in ("events", "connections", "threads", "users"):
        if not 1 <= getattr(args, name) <= 1_000_000:
            parser.error(f"--{name} must be between 1 and 1000000")
    if not 0 <= args.burst <= 1_000_000 or any(not 0 <= n <= 10**8 for n in args.inbox_rows):
        parser.error("--burst and --inbox-rows must be >= 0")
    if args.steady_rate < 0 or args.steady_rate * args.steady_seconds > 100_000:
        parser.error("--steady-rate x --steady-seconds must be between 0 and 100000 events")
    if args.databases is None:
        args.databases = ["sqlite"] + (["postgresql"] if args.postgres and args.redis else [])
    if "postgresql" in args.databases and not (args.postgres and args.redis):
        parser.error("postgresql needs --postgres and --redis (or TEST_DATABASE_URL/REDIS_URL)")
    if args.py_spy and shutil.which("py-spy") is None:
        parser.error("--py-spy needs py-spy: pip install py-spy")
    require_wrk()

    import logging

    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    machine = machine_info(args)
    results = []
    for backend in args.databases:
        for inbox_rows in args.inbox_rows:
            print(f"\n{backend}, inbox {inbox_rows:,} rows:", flush=True)
            result = bench_run(backend, inbox_rows, args)
            result["goals"] = goals(result)
            print(report(result, args), flush=True)
            results.append(result)
    machine["load_average_at_end"] = os.getloadavg()
    machine["total_seconds"] = round(time.monotonic() - started)
    print(summary(results))
    write_results(args.output, machine, results)
    print(f"\nWrote {args.output} ({machine['total_seconds']} s in all)")


if __name__ == "__main__":
    main()
