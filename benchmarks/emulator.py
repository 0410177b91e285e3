"""Stripe emulator: latency of a write and a read as its stored state grows.

    python -m benchmarks.emulator [--sizes 100 10000] [--samples 200]

For each size N, in a fresh temporary directory:

1. seed a state file holding N customers. Going through the API would take longer than
   the thing measured, so the customers are built in this process with localstripe's
   own ``Customer`` (after :func:`devtools.stripe_emulator.install` with no state file,
   so nothing is saved while building) and the store is pickled as a plain dict, the
   state file's format before the store had its own (a ``Store``), which the emulator
   still loads: what an emulator that had created them would have left;
2. start the emulator as ``make run`` does (``start_in_background`` with that state
   file: a ``python -m devtools.stripe_emulator`` subprocess that loads it);
3. time ``POST /v1/customers`` (create) and ``GET /v1/customers/{id}`` (read, of seeded
   customers) one after the other on a keep-alive connection, ``--samples`` of each
   after a short warm-up, as the client sees them;
4. stop it cleanly (SIGTERM) and report the state file's size.

The emulators of all sizes run at once and step 3 takes turns between them (a create
from each, then the next create from each...; the same for reads), so that whatever
else the machine is doing slows every size alike rather than whichever ran then: the
sizes are compared, not the moments.

The emulator's CPU time per call (from ``/proc``, on Linux) is reported too: unlike
latencies, it hardly depends on what else the machine runs.

Prints a table of p50/p95/p99 in milliseconds and writes the same numbers as JSON to
``benchmarks/results/emulator.json``, keeping the ``before`` entry already there (the
figures from before the store was indexed, for comparison).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pickle
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from localstripe import resources as ls

from devtools.liveapp import free_port
from devtools.stripe_emulator import install, start_in_background

RESULTS = Path(__file__).resolve().parent / "results" / "emulator.json"
API_KEY = "sk_test_benchmark"


def seed_state_file(path: Path, customers: int) -> list[str]:
    """Write a state file holding ``customers`` customers; return their ids."""
    install(None)  # patch localstripe here too, persisting nothing while building
    ls.store.clear()
    # Webhooks are the server's business (and need its event loop): none here.
    schedule_webhook, ls.schedule_webhook = ls.schedule_webhook, lambda event: None
    try:
        ids = [ls.Customer(email=f"seed{i}@example.com").id for i in range(customers)]
    finally:
        ls.schedule_webhook = schedule_webhook
    with open(path, "wb") as f:
        # A plain dict, which the emulator loads with store.update(), as older state files.
        pickle.dump(dict(ls.store), f, protocol=pickle.HIGHEST_PROTOCOL)
    ls.store.clear()
    return ids


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {
        "p50": round(cuts[49], 2),
        "p95": round(cuts[94], 2),
        "p99": round(cuts[98], 2),
        "max": round(max(samples_ms), 2),
    }


def timed(call) -> float:
    start = time.perf_counter()
    response = call()
    elapsed = (time.perf_counter() - start) * 1000
    response.raise_for_status()
    return elapsed


class _Emulator:
    """An emulator started on a state file of ``customers`` seeded customers."""

    def __init__(self, customers: int, stack: contextlib.ExitStack) -> None:
        self.customers = customers
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="emulator-bench-"))
        self.state = Path(workdir) / "state.pickle"
        started = time.perf_counter()
        self.ids = seed_state_file(self.state, customers)
        self.seed_s = time.perf_counter() - started
        self.seeded_bytes = self.state.stat().st_size
        self.exit_code: int | None = None
        self.process = start_in_background(free_port(), state_file=self.state, startup_timeout=120)
        stack.callback(self.stop)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        self.client = httpx.Client(base_url=self.process.url, headers=headers, timeout=30)
        stack.callback(self.client.close)
        assert self.read(len(self.ids) - 1).status_code == 200, "not seeded"
        self.writes: list[float] = []
        self.reads: list[float] = []
        # The emulator's CPU seconds over all creates, over all reads (None: unknown).
        self.write_cpu: float | None = 0.0
        self.read_cpu: float | None = 0.0

    def cpu_seconds(self) -> float | None:
        """CPU time the emulator's process used so far (Linux; ``None`` elsewhere)."""
        try:
            fields = Path(f"/proc/{self.process.process.pid}/stat").read_text().rsplit(")", 1)[1]
        except OSError:
            return None
        utime, stime = fields.split()[11:13]  # fields 14 and 15 of proc(5)
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def create(self) -> httpx.Response:
        email = f"{uuid.uuid4().hex[:12]}@example.com"
        return self.client.post("/v1/customers", data={"email": email})

    def read(self, i: int) -> httpx.Response:
        return self.client.get(f"/v1/customers/{self.ids[i % len(self.ids)]}")

    def stop(self) -> None:
        if self.exit_code is None:
            self.exit_code = self.process.stop()

    def result(self) -> dict:
        assert self.exit_code == 0, f"emulator exited with {self.exit_code}"

        def per_call(cpu: float | None, calls: list[float]) -> float | None:
            return None if cpu is None else round(cpu * 1000 / len(calls), 2)

        return {
            "customers": self.customers,
            "seed_seconds": round(self.seed_s, 2),
            "state_bytes_seeded": self.seeded_bytes,
            "state_bytes_after_stop": self.state.stat().st_size,
            "create_ms": percentiles(self.writes),
            "read_ms": percentiles(self.reads),
            # The emulator's own CPU time, which other jobs on the machine hardly change.
            "create_cpu_ms_per_call": per_call(self.write_cpu, self.writes),
            "read_cpu_ms_per_call": per_call(self.read_cpu, self.reads),
        }


def _timed_with_cpu(emulator: _Emulator, call, samples: list[float], cpu: str) -> None:
    """Time ``call`` into ``samples``; add the emulator's CPU time to its ``cpu`` total."""
    before = emulator.cpu_seconds()
    samples.append(timed(call))
    after = emulator.cpu_seconds()
    total = getattr(emulator, cpu)
    if before is None or after is None or total is None:
        setattr(emulator, cpu, None)
    else:
        setattr(emulator, cpu, total + after - before)


def run_sizes(sizes: list[int], samples: int, warmup: int) -> list[dict]:
    with contextlib.ExitStack() as stack:
        emulators = [_Emulator(n, stack) for n in sizes]
        for i in range(warmup):
            for emulator in emulators:
                timed(emulator.create)
                timed(lambda e=emulator, i=i: e.read(i))
        # Taking turns (see the module's docstring).
        for _ in range(samples):
            for emulator in emulators:
                _timed_with_cpu(emulator, emulator.create, emulator.writes, "write_cpu")
        for i in range(samples):
            for emulator in emulators:
                read = functools.partial(emulator.read, i * 7919)
                _timed_with_cpu(emulator, read, emulator.reads, "read_cpu")
        for emulator in emulators:
            emulator.client.close()
            emulator.stop()  # the state files are read before the directories go
        return [emulator.result() for emulator in emulators]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls of each first")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows = run_sizes(args.sizes, args.samples, args.warmup)

    print(
        f"{'customers':>9} | {'create p50':>10} {'p95':>7} {'p99':>7} {'cpu':>5} | "
        f"{'read p50':>8} {'p95':>7} {'p99':>7} {'cpu':>5} | {'state file':>10}"
    )
    for row in rows:
        c, r = row["create_ms"], row["read_ms"]
        c_cpu, r_cpu = row["create_cpu_ms_per_call"], row["read_cpu_ms_per_call"]
        print(
            f"{row['customers']:>9} | {c['p50']:>10.2f} {c['p95']:>7.2f} {c['p99']:>7.2f} "
            f"{'-' if c_cpu is None else f'{c_cpu:.2f}':>5} | "
            f"{r['p50']:>8.2f} {r['p95']:>7.2f} {r['p99']:>7.2f} "
            f"{'-' if r_cpu is None else f'{r_cpu:.2f}':>5} | "
            f"{row['state_bytes_after_stop'] / 1024:>7.0f} KB"
        )
    print(
        "(milliseconds, client side, keep-alive connection; cpu: the emulator's CPU time "
        "per call, on average)"
    )

    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "emulator",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "samples": args.samples,
        "warmup": args.warmup,
        "interleaved": True,
        "results": rows,
    }
    try:
        before = json.loads(args.output.read_text()).get("before")
    except (OSError, ValueError):
        before = None
    if before is not None:
        result["before"] = before
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
