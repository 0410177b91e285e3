"""Stripe emulator: latency of a write and a read as its stored state grows.

    python -m benchmarks.emulator [--sizes 100 10000] [--samples 200]

For each size N, in a fresh temporary directory:

1. seed a state file holding N customers. Going through the API would take as long as
   the thing measured (before incremental persistence, every write re-saved the whole
   store, so seeding was quadratic), so the customers are built in this process with
   localstripe's own ``Customer`` (after :func:`devtools.stripe_emulator.install` with
   no state file, so nothing is saved while building) and the store is pickled in the
   state file's format, exactly what an emulator that had created them would have left;
2. start the emulator as ``make run`` does (``start_in_background`` with that state
   file: a ``python -m devtools.stripe_emulator`` subprocess that loads it);
3. time ``POST /v1/customers`` (create) and ``GET /v1/customers/{id}`` (read, of seeded
   customers) one after the other on a keep-alive connection, ``--samples`` of each
   after a short warm-up, as the client sees them;
4. stop it cleanly (SIGTERM) and report the state file's size.

Prints a table of p50/p95/p99 in milliseconds and writes the same numbers as JSON to
``benchmarks/results/emulator.json``.
"""

from __future__ import annotations

import argparse
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
    seeded: dict = {}
    ids = []
    for i in range(customers):
        ids.append(ls.Customer(email=f"seed{i}@example.com").id)
        # Moved out after each one: creating a customer scans the store (its event
        # lists the customer's subscriptions), which would make seeding quadratic.
        seeded.update(ls.store)
        ls.store.clear()
    with open(path, "wb") as f:
        # A plain dict, which the emulator loads with store.update(): unpickling a Store
        # calls Store.__setitem__ per object, which used to re-save the whole store each.
        pickle.dump(seeded, f, protocol=pickle.HIGHEST_PROTOCOL)
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


def run_size(customers: int, samples: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="emulator-bench-") as workdir:
        state = Path(workdir) / "state.pickle"
        started = time.perf_counter()
        ids = seed_state_file(state, customers)
        seed_s = time.perf_counter() - started
        seeded_bytes = state.stat().st_size

        emulator = start_in_background(free_port(), state_file=state, startup_timeout=120)
        try:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            with httpx.Client(base_url=emulator.url, headers=headers, timeout=30) as client:
                assert client.get(f"/v1/customers/{ids[-1]}").status_code == 200, "not seeded"

                def create():
                    email = f"{uuid.uuid4().hex[:12]}@example.com"
                    return client.post("/v1/customers", data={"email": email})

                def read(i: int):
                    return client.get(f"/v1/customers/{ids[i % len(ids)]}")

                for i in range(warmup):
                    timed(create)
                    timed(lambda i=i: read(i))
                writes = [timed(create) for _ in range(samples)]
                reads = [timed(lambda i=i: read(i * 7919)) for i in range(samples)]
        finally:
            exit_code = emulator.stop()
        assert exit_code == 0, f"emulator exited with {exit_code}"
        return {
            "customers": customers,
            "seed_seconds": round(seed_s, 2),
            "state_bytes_seeded": seeded_bytes,
            "state_bytes_after_stop": state.stat().st_size,
            "create_ms": percentiles(writes),
            "read_ms": percentiles(reads),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls of each first")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows = [run_size(n, args.samples, args.warmup) for n in args.sizes]

    print(
        f"{'customers':>9} | {'create p50':>10} {'p95':>7} {'p99':>7} | "
        f"{'read p50':>8} {'p95':>7} {'p99':>7} | {'state file':>10}"
    )
    for row in rows:
        c, r = row["create_ms"], row["read_ms"]
        print(
            f"{row['customers']:>9} | {c['p50']:>10.2f} {c['p95']:>7.2f} {c['p99']:>7.2f} | "
            f"{r['p50']:>8.2f} {r['p95']:>7.2f} {r['p99']:>7.2f} | "
            f"{row['state_bytes_after_stop'] / 1024:>7.0f} KB"
        )
    print("(milliseconds, client side, keep-alive connection)")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "emulator",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "samples": args.samples,
        "warmup": args.warmup,
        "results": rows,
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
