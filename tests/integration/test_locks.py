"""Named locks across connections and processes (PostgreSQL advisory locks, SQLite file locks)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta

import pytest
import sqlalchemy as sa

from subscription_app import locks
from subscription_app.models import AppLock, utcnow


def try_in_other_thread(
    name: str, timeout: float, take: Callable[..., AbstractContextManager] = locks.hold
) -> BaseException | None:
    """Try to take `name` (with `take`) from another thread (its own connection); the error,
    if any."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            with take(name, timeout=timeout):
                outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(timeout=30)
    return outcome[0]


def test_a_held_lock_keeps_others_out_until_released(db_engine):
    with locks.hold("subscriber:1"):
        assert isinstance(try_in_other_thread("subscriber:1", timeout=0.3), locks.LockTimeout)
        assert try_in_other_thread("subscriber:2", timeout=0.3) is None  # other names are free
    assert try_in_other_thread("subscriber:1", timeout=0.3) is None


def test_the_holder_can_commit_inside_without_releasing(db_engine, session):
    with locks.hold("subscription:x"):
        session.execute(sa.text("SELECT 1"))
        session.commit()
        assert isinstance(try_in_other_thread("subscription:x", timeout=0.3), locks.LockTimeout)


def _wait_until_blocked(engine, waiting: threading.Event) -> None:
    """Return once another thread is waiting for a lock (not merely about to ask for one):
    on either database its loop has found the lock held and paused to try again."""
    assert waiting.wait(timeout=30), "the waiter never waited for the lock"


def test_a_waiter_gets_the_lock_when_the_holder_lets_go(db_engine, monkeypatch):
    """A held lock is waited for (not refused at once) and taken when its holder lets go."""
    held, release, waiting = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []
    pause = locks.time.sleep

    def noting_sleep(seconds: float) -> None:  # SQLite's wait: a poll loop
        waiting.set()
        pause(seconds)

    monkeypatch.setattr(locks.time, "sleep", noting_sleep)

    def holder() -> None:
        with locks.hold("subscriber:7"):
            held.set()
            release.wait(timeout=30)
            order.append("released")

    def waiter() -> None:
        with locks.hold("subscriber:7", timeout=30):
            order.append("got")

    first = threading.Thread(target=holder)
    first.start()
    held.wait(timeout=30)
    second = threading.Thread(target=waiter)
    second.start()
    _wait_until_blocked(db_engine, waiting)
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert order == ["released", "got"]


@pytest.fixture
def sqlite_engine(tmp_path, monkeypatch):
    from subscription_app import db
    from subscription_app.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'locks.db'}"
    upgrade(url)
    engine = db.make_engine(url)
    monkeypatch.setattr(db, "get_engine", lambda: engine)
    yield engine
    engine.dispose()


def test_a_sqlite_lock_held_by_another_process_keeps_it_out_and_dies_with_it(sqlite_engine):
    # The processor process and the web worker share SQLite: the lock spans processes, and a
    # process that dies (killed mid-hold) leaves nothing locked behind it.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_IN_ANOTHER_PROCESS, str(locks.lock_directory(sqlite_engine))],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert isinstance(try_in_other_thread("subscriber:9", timeout=0.3), locks.LockTimeout)
    finally:
        holder.kill()
        holder.wait()
    assert try_in_other_thread("subscriber:9", timeout=5) is None


# Takes "subscriber:9" as `locks.hold` does on SQLite, says so, and waits to be killed.
HOLD_IN_ANOTHER_PROCESS = """
import sys, time
from pathlib import Path
from subscription_app import locks
with locks._hold_file(Path(sys.argv[1]), "subscriber:9", timeout=5):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_windows_fallback_lease_left_by_a_crashed_process_lapses(sqlite_engine, monkeypatch):
    monkeypatch.setattr(locks, "fcntl", None)
    with sqlite_engine.begin() as conn:
        conn.execute(
            sa.insert(AppLock.__table__).values(
                name="subscriber:9", holder="dead", expires_at=utcnow() + timedelta(seconds=60)
            )
        )
    assert isinstance(try_in_other_thread("subscriber:9", timeout=0.3), locks.LockTimeout)
    with sqlite_engine.begin() as conn:
        conn.execute(
            sa.update(AppLock.__table__).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert try_in_other_thread("subscriber:9", timeout=0.3) is None


def test_a_sqlite_lock_directory_removed_while_running_is_made_again(sqlite_engine):
    with locks.hold("subscriber:9", timeout=1):
        pass
    shutil.rmtree(locks.lock_directory(sqlite_engine))  # someone tidied up the directory
    with locks.hold("subscriber:9", timeout=1):
        pass
    assert try_in_other_thread("subscriber:9", timeout=1) is None


def test_many_waiters_hold_no_connection_so_the_worker_keeps_serving(db_engine, monkeypatch):
    """More requests wait for one lock than the engine's pool has connections (one account's
    burst of clicks): the holder and everyone else still get connections, and each waiter
    gets the lock in turn."""
    waiters = db_engine.pool.size() + db_engine.pool._max_overflow + 5
    paused: set[int] = set()
    all_waiting = threading.Condition()
    pause = locks.time.sleep

    def noting_sleep(seconds: float) -> None:
        with all_waiting:
            paused.add(threading.get_ident())
            all_waiting.notify_all()
        pause(seconds)

    monkeypatch.setattr(locks.time, "sleep", noting_sleep)
    got: list[int] = []
    failures: list[BaseException] = []

    def waiter(number: int) -> None:
        try:
            with locks.hold("subscriber:crowd", timeout=60):
                got.append(number)
        except BaseException as exc:
            failures.append(exc)

    with locks.hold("subscriber:crowd"):
        threads = [threading.Thread(target=waiter, args=(n,)) for n in range(waiters)]
        for thread in threads:
            thread.start()
        with all_waiting:
            assert all_waiting.wait_for(lambda: len(paused) >= waiters, timeout=30), (
                f"only {len(paused)} of {waiters} waiters are waiting without a connection"
            )
        # Every waiter is waiting: the pool still serves this worker's other requests.
        with db_engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    for thread in threads:
        thread.join(timeout=90)
    assert failures == [] and sorted(got) == list(range(waiters))


def test_a_subscription_lock_is_the_same_lock_whatever_the_index_key(db_engine, settings_env):
    """During a rolling key rotation old processes (old index key first) and new ones (new
    key first) must exclude each other on one subscription."""
    from subscription_app import crypto
    from subscription_app.billing import sync

    old, new = crypto.generate_key(), crypto.generate_key()
    settings_env(APP_BLIND_INDEX_KEY=f"{old},{new}")
    with (
        db_engine.connect() as conn,
        sa.orm.Session(bind=conn) as session,
        sync.subscription_lock("sub_rolling", session),
    ):
        settings_env(APP_BLIND_INDEX_KEY=f"{new},{old}")  # a process already rotated
        other = functools.partial(sync.subscription_lock, session=session)
        assert isinstance(try_in_other_thread("sub_rolling", 0.3, other), locks.LockTimeout)
