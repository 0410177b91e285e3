"""Named locks that hold across threads, processes and backend workers.

Billing writes that must not interleave (two subscribe attempts of one person; two workers
applying what Stripe says about one subscription) run inside `hold(name)`:

- PostgreSQL: a transaction-scoped advisory lock (`pg_try_advisory_xact_lock`) on a connection
  of its own, so the work inside may commit as often as it needs while the lock stays held. If
  the process dies, PostgreSQL ends the transaction and the lock goes with it. A waiter holds
  no connection between its tries (see `_hold_postgresql`).
- SQLite: an exclusive `flock` on a file named after the lock, in a directory beside the
  database file (`<database>-locks/`). SQLite serves one machine, so an operating-system lock
  spans every process that can open the database; it costs a system call instead of two write
  transactions (a twentieth of the time), and the kernel releases it when its process dies.
  Where `fcntl` is missing (Windows), a lease row in `app_lock` is taken with one
  compare-and-set statement instead; a lease that was never released (a crashed process)
  lapses after `LEASE`, so nothing stays locked for good.

Waiting is bounded: after `timeout` seconds `LockTimeout` is raised and the caller answers
"try again" (a request) or retries later (a webhook event).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: leases in the database instead
    fcntl = None  # type: ignore[assignment]  # the module is absent on this platform

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import col

from subscription_app import db
from subscription_app.models import AppLock, utcnow

# Longer than any Stripe call may take (20 s timeout, two retries), so a live holder keeps it.
LEASE = timedelta(seconds=120)
DEFAULT_TIMEOUT_SECONDS = 30.0
_POLL_FIRST, _POLL_MAX = 0.005, 0.1


class LockTimeout(RuntimeError):
    """Another holder kept the lock for longer than the caller was willing to wait."""


def _advisory_key(name: str) -> int:
    # pg advisory locks take a signed 64-bit key.
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def _hold_postgresql(engine: Engine, name: str, timeout: float) -> Iterator[None]:
    key = _advisory_key(name)
    deadline = time.monotonic() + timeout
    pause = _POLL_FIRST
    while True:
        # Mostly nobody else holds it: one statement takes it (a lock is taken for every
        # webhook event applied, so a round trip saved here counts). If it is held, the
        # connection goes back to the pool while we wait, and we try again: a waiter that
        # kept its connection blocked in pg_advisory_xact_lock would take it from the
        # engine's pool for as long as it waits, and a dozen requests waiting for one
        # person's lock (one account's double clicks, say) would leave the holder and every
        # other request of the worker without a connection until the pool timed out.
        conn = engine.connect()
        try:
            taken = conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(key))).scalar_one()
        except BaseException:
            conn.close()
            raise
        if taken:
            break
        conn.rollback()
        conn.close()
        if time.monotonic() >= deadline:
            raise LockTimeout(name)
        time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
        pause = min(_POLL_MAX, pause * 2)
    try:
        yield
    finally:
        try:
            conn.rollback()  # ends the transaction, which releases the lock
        finally:
            conn.close()


def _try_lease(engine: Engine, name: str, holder: str) -> bool:
    now = utcnow()
    insert = sqlite_insert(AppLock).values(name=name, holder=holder, expires_at=now + LEASE)
    statement = insert.on_conflict_do_update(
        index_elements=[col(AppLock.name)],
        set_={"holder": insert.excluded.holder, "expires_at": insert.excluded.expires_at},
        where=col(AppLock.expires_at) < now,
    )
    with engine.begin() as conn:
        return conn.execute(statement).rowcount == 1


@contextmanager
def _hold_lease(engine: Engine, name: str, timeout: float) -> Iterator[None]:
    holder = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    pause = _POLL_FIRST
    while not _try_lease(engine, name, holder):
        if time.monotonic() >= deadline:
            raise LockTimeout(name)
        time.sleep(pause)
        pause = min(_POLL_MAX, pause * 2)
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(
                sa.delete(AppLock).where(col(AppLock.name) == name, col(AppLock.holder) == holder)
            )


def lock_directory(engine: Engine) -> Path:
    """Where the lock files of a SQLite database live (created on first use)."""
    return _lock_directory(engine.url.database, os.getpid())


@lru_cache(maxsize=8)
def _lock_directory(database: str | None, pid: int) -> Path:
    # Cached: every hold asks, and resolving the path and creating the directory would
    # cost as much as the lock itself. Keyed by process: an in-memory database's is its own.
    if database and database != ":memory:" and not database.startswith("file:"):
        directory = Path(f"{Path(database).resolve()}-locks")
    else:  # an in-memory database lives in one process: a directory of that process's own
        directory = Path(tempfile.gettempdir()) / f"subscription_app-locks-{pid}"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


@contextmanager
def _hold_file(directory: Path, name: str, timeout: float) -> Iterator[None]:
    assert fcntl is not None
    # One file per lock name, never deleted: unlinking a file another process may just have
    # opened would let two holders lock two different files of one name.
    path = directory / hashlib.sha256(name.encode()).hexdigest()[:32]
    # Opened per hold: a flock belongs to its open file, so two threads of one process
    # exclude each other too.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:  # the (cached) directory was removed while we ran
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        pause = _POLL_FIRST
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(name) from None
                time.sleep(pause)
                pause = min(_POLL_MAX, pause * 2)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def hold(name: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the lock called `name` for the duration of the block (blocking; use in a thread).

    Raises:
        LockTimeout: the lock could not be had within `timeout` seconds.
    """
    engine = db.get_engine()
    if engine.dialect.name == "postgresql":
        with _hold_postgresql(engine, name, timeout):
            yield
    elif fcntl is not None:
        with _hold_file(lock_directory(engine), name, timeout):
            yield
    else:  # pragma: no cover - Windows
        with _hold_lease(engine, name, timeout):
            yield
