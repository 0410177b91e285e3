"""Accounts service: hashing, registration, login failures, tokens."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import event
from sqlmodel import select

from subscription_app import accounts, ratelimit
from subscription_app.models import AuthSession, User, utcnow


def test_password_is_hashed_with_argon2():
    hashed = accounts.hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in hashed
    assert accounts.verify_password("correct horse battery", hashed)
    assert not accounts.verify_password("wrong horse battery", hashed)
    assert not accounts.verify_password("anything", "not-a-hash")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("  Alice@Example.COM ", "alice@example.com"), ("bob@example.org", "bob@example.org")],
)
def test_emails_are_normalised(raw, expected):
    assert accounts.normalize_email(raw) == expected


@pytest.mark.parametrize(
    "bad", ["", "no-at-sign", "a@", "@b.com", "a b@c.com", "x" * 250 + "@e.co"]
)
def test_invalid_emails_are_refused(bad):
    with pytest.raises(accounts.InvalidEmail):
        accounts.normalize_email(bad)


@pytest.mark.parametrize("bad", ["", "short", "       ", "x" * 129])
def test_password_rules(bad):
    with pytest.raises(accounts.InvalidPassword):
        accounts.check_password_rules(bad)


def test_register_and_refuse_duplicates_case_insensitively(session):
    user = accounts.register_user(session=session, email="Ann@Example.com", password="s3cret-pass")
    session.commit()
    assert user.email == "ann@example.com"
    with pytest.raises(accounts.EmailTaken, match="already exists"):
        accounts.register_user(session=session, email="ANN@example.com", password="other-pass")


def test_wrong_password_and_unknown_email_look_the_same(session):
    accounts.register_user(session=session, email="cat@example.com", password="s3cret-pass")
    session.commit()
    with pytest.raises(accounts.InvalidCredentials) as wrong_password:
        accounts.authenticate(session=session, email="cat@example.com", password="nope-nope")
    with pytest.raises(accounts.InvalidCredentials) as unknown_email:
        accounts.authenticate(session=session, email="dog@example.com", password="s3cret-pass")
    with pytest.raises(accounts.InvalidCredentials) as malformed:
        accounts.authenticate(session=session, email="not an email", password="s3cret-pass")
    assert wrong_password.value.message == unknown_email.value.message == malformed.value.message
    user = accounts.authenticate(session=session, email=" CAT@example.com", password="s3cret-pass")
    assert user.email == "cat@example.com"


def test_token_round_trip_logout_and_expiry(session):
    user = accounts.register_user(session=session, email="eve@example.com", password="s3cret-pass")
    issued = accounts.issue_token(session=session, user=user)
    session.commit()
    assert accounts.user_for_token(session=session, token=issued.token).id == user.id
    assert 0 < issued.expires_in <= 7 * 24 * 3600

    # Logged out: the same token no longer works.
    assert accounts.revoke_token(session=session, token=issued.token)
    session.commit()
    assert accounts.user_for_token(session=session, token=issued.token) is None
    assert not accounts.revoke_token(session=session, token=issued.token)

    # Expired session row: rejected even though the JWT itself is still in date.
    second = accounts.issue_token(session=session, user=user)
    for row in session.query(AuthSession).filter(AuthSession.revoked_at.is_(None)):
        row.expires_at = utcnow() - timedelta(seconds=1)
    session.commit()
    assert accounts.user_for_token(session=session, token=second.token) is None


def test_forged_and_garbage_tokens_are_rejected(session):
    user = accounts.register_user(session=session, email="fay@example.com", password="s3cret-pass")
    issued = accounts.issue_token(session=session, user=user)
    session.commit()
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    forged = jwt.encode(claims, "another-key-another-key-another-key", algorithm="HS256")
    none_alg = jwt.encode(claims, None, algorithm="none")
    for token in [forged, none_alg, "", "abc.def.ghi", issued.token + "x", "x" * 5000]:
        assert accounts.user_for_token(session=session, token=token) is None
    assert session.get(User, user.id) is not None


def test_a_token_past_its_own_expiry_is_rejected(session):
    from subscription_app.settings import get_settings

    user = accounts.register_user(session=session, email="old@example.com", password="s3cret-pass")
    issued = accounts.issue_token(session=session, user=user)
    session.commit()
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    claims["exp"] = int(utcnow().timestamp()) - 5  # same session, same key, but expired
    expired = jwt.encode(
        claims, get_settings().app_secret_key.get_secret_value(), algorithm="HS256"
    )
    assert accounts.user_for_token(session=session, token=expired) is None
    assert accounts.user_for_token(session=session, token=issued.token).id == user.id


def test_password_checks_run_one_at_a_time_per_process(monkeypatch):
    """Each takes 64 MiB and every core for a moment: a flood of logins queues for them
    instead of taking every thread, and memory, at once."""
    import threading
    import time

    real = accounts._password_hash.verify
    running, most = [0], [0]
    lock = threading.Lock()

    def counted(password, hashed):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.02)  # a check under way while the others arrive
            return real(password, hashed)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(accounts._password_hash, "verify", counted)
    hashed = accounts.hash_password("correct horse battery")
    threads = [
        threading.Thread(target=accounts.verify_password, args=("correct horse battery", hashed))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == accounts.HASHES_AT_ONCE == 1


@contextmanager
def every_check_taken(monkeypatch) -> Iterator[None]:
    """A flood holds every password check this process may run; a wait gives up at once."""
    monkeypatch.setattr(accounts, "HASHING_WAIT_SECONDS", 0.05)
    assert accounts._hashing.acquire(timeout=1)
    try:
        yield
    finally:
        accounts._hashing.release()


def test_a_login_that_waits_too_long_for_a_password_check_is_told_to_retry(session, monkeypatch):
    accounts.register_user(session=session, email="queued@example.com", password="s3cret-pass")
    session.commit()
    with every_check_taken(monkeypatch), pytest.raises(accounts.HashingBusy) as busy:
        accounts.login(
            session=session,
            email="queued@example.com",
            password="s3cret-pass",
            client_address="203.0.113.9",
        )
    assert busy.value.kind == "busy" and busy.value.retry_after
    assert "try again in a moment" in busy.value.message
    # Nothing was decided: the same login goes through once a check is free.
    issued = accounts.login(
        session=session, email="queued@example.com", password="s3cret-pass", client_address=None
    )
    assert issued.token


@pytest.fixture
def statements(db_engine):
    """The SQL statements the app sends to the test database from now on."""
    sent: list[str] = []

    def record(conn, cursor, statement, *_):
        sent.append(statement)

    event.listen(db_engine, "before_cursor_execute", record)
    yield sent
    event.remove(db_engine, "before_cursor_execute", record)


def test_a_login_told_busy_counted_nothing_and_asked_the_database_nothing(
    session, settings_env, statements, monkeypatch
):
    """Waiting for a password check, an attempt holds no database connection; refused, it
    has used none of the address's or the account's attempts."""
    accounts.register_user(session=session, email="flood@example.com", password="s3cret-pass")
    session.commit()
    settings_env(RATE_LIMIT_ATTEMPTS_PER_ADDRESS="1", RATE_LIMIT_LOGIN_FAILURES_PER_ACCOUNT="1")
    statements.clear()
    with every_check_taken(monkeypatch), pytest.raises(accounts.HashingBusy):
        accounts.login(
            session=session,
            email="flood@example.com",
            password="s3cret-pass",
            client_address="203.0.113.9",
        )
    assert statements == []
    # The address's one attempt is still there for the real try.
    issued = accounts.login(
        session=session,
        email="flood@example.com",
        password="s3cret-pass",
        client_address="203.0.113.9",
    )
    assert issued.token


def test_a_registration_told_busy_counted_nothing_and_asked_the_database_nothing(
    session, settings_env, statements, monkeypatch
):
    settings_env(RATE_LIMIT_ATTEMPTS_PER_ADDRESS="1", RATE_LIMIT_REGISTRATIONS_PER_ACCOUNT="1")
    statements.clear()
    with every_check_taken(monkeypatch), pytest.raises(accounts.HashingBusy):
        accounts.register(
            session=session,
            email="new@example.com",
            password="s3cret-pass",
            client_address="203.0.113.9",
        )
    assert statements == []
    assert session.exec(select(User)).all() == []
    # Both the address's and the account's one attempt are left.
    user = accounts.register(
        session=session,
        email="new@example.com",
        password="s3cret-pass",
        client_address="203.0.113.9",
    )
    assert user.email == "new@example.com"


@pytest.mark.parametrize("action", ["login", "register"])
def test_an_attempt_over_a_limit_is_refused_without_waiting_for_a_password_check(
    session, settings_env, monkeypatch, action
):
    """A limited script's requests are answered at once, not queued behind real people."""
    settings_env(RATE_LIMIT_ATTEMPTS_PER_ADDRESS="1")
    ratelimit.check_register(account="someone@example.com", client_address="203.0.113.9")
    # Not HashingBusy: it never queued.
    with every_check_taken(monkeypatch), pytest.raises(ratelimit.RateLimited):
        getattr(accounts, action)(
            session=session,
            email="limited@example.com",
            password="s3cret-pass",
            client_address="203.0.113.9",
        )


def test_attempts_past_the_waiting_room_are_told_busy_at_once(session, monkeypatch):
    """`WAITING_AT_MOST` attempts wait already (a flood): the next takes no thread to wait
    on, though a check would come free in time."""
    accounts.register_user(session=session, email="late@example.com", password="s3cret-pass")
    session.commit()
    taken = 0
    while accounts._queue.acquire(blocking=False):
        taken += 1
    try:
        assert taken == accounts.HASHES_AT_ONCE + accounts.WAITING_AT_MOST
        with pytest.raises(accounts.HashingBusy):
            accounts.login(
                session=session,
                email="late@example.com",
                password="s3cret-pass",
                client_address=None,
            )
    finally:
        for _ in range(taken):
            accounts._queue.release()
    assert accounts.login(
        session=session, email="late@example.com", password="s3cret-pass", client_address=None
    ).token


def test_a_registration_writes_after_giving_its_password_check_back(session, db_engine):
    """A write may wait (SQLite waits for another writer's lock): it must not hold every
    password check of the process meanwhile."""
    check_free_at_write: list[bool] = []

    def record(conn, cursor, statement, *_):
        if statement.lstrip().upper().startswith("INSERT"):
            free = accounts._hashing.acquire(blocking=False)
            if free:
                accounts._hashing.release()
            check_free_at_write.append(free)

    event.listen(db_engine, "before_cursor_execute", record)
    try:
        accounts.register(
            session=session, email="writer@example.com", password="s3cret-pass", client_address=None
        )
        session.commit()
    finally:
        event.remove(db_engine, "before_cursor_execute", record)
    assert check_free_at_write and all(check_free_at_write)


def test_a_registration_of_a_taken_email_spends_no_hash(session, monkeypatch):
    accounts.register_user(session=session, email="taken@example.com", password="s3cret-pass")
    session.commit()
    hashed: list[str] = []
    real_hash = accounts._password_hash.hash
    monkeypatch.setattr(
        accounts._password_hash,
        "hash",
        lambda password: hashed.append(password) or real_hash(password),
    )
    with pytest.raises(accounts.EmailTaken):
        accounts.register(
            session=session, email="Taken@example.com", password="0ther-pass", client_address=None
        )
    assert hashed == []
