"""Named locks across connections and processes (PostgreSQL advisory locks, SQLite file locks)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from subscription_app import locks
from subscription_app.models import AppLock, utcnow


def try_in_other_thread(name: str, timeout: float) -> BaseException | None:
    """Try to take `name` from another thread (its own connection); the error, if any."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            with locks.hold(name, timeout=timeout):
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
    """Return once another thread is waiting for a lock (not merely about to ask for one)."""
    if engine.dialect.name != "postgresql":  # SQLite: the flock loop has paused to retry
        assert waiting.wait(timeout=30)
        return
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
        " AND datname = current_database()"
    )
    with engine.connect() as conn:
        for _ in range(3000):  # bounded: 30 s of 10 ms polls
            if conn.execute(query).scalar_one():
                return
            waiting.wait(timeout=0.01)
    raise AssertionError("the waiter never waited for the lock")


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
