"""In-app messages and the email outbox, on SQLite and PostgreSQL, with a real SMTP server."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from subscription_app import accounts, notifications
from subscription_app.models import Notification, OutboxEmail, utcnow


@pytest.fixture
def user_id(db_engine) -> int:
    with Session(db_engine) as session:
        user = accounts.register_user(
            session=session, email="member@example.com", password="correct horse battery"
        )
        session.commit()
        assert user.id is not None
        return user.id


def tell(db_engine, user_id: int, text: str, *, commit: bool = True) -> None:
    with Session(db_engine) as session:
        notifications.tell(session, user_id=user_id, kind="test", text=text)
        if commit:
            session.commit()
        else:
            session.rollback()


def outbox(db_engine) -> list[OutboxEmail]:
    with Session(db_engine) as session:
        return list(session.exec(select(OutboxEmail).order_by(OutboxEmail.id)).all())


def test_nothing_is_sent_from_inside_the_transaction(db_engine, user_id, smtp):
    with Session(db_engine) as session:
        notifications.tell(session, user_id=user_id, kind="test", text="Hello.")
        assert smtp.messages == []  # written, not sent
        session.commit()
    assert smtp.messages == []
    assert notifications.deliver_due().sent == 1
    assert len(smtp.messages) == 1 and "Hello." in smtp.messages[0]
    assert "To: member@example.com" in smtp.messages[0]
    assert notifications.deliver_due().sent == 0  # sent once
    [row] = outbox(db_engine)
    assert row.status == "sent" and row.sent_at is not None


def test_a_rolled_back_change_sends_nothing_and_saves_no_message(db_engine, user_id, smtp):
    tell(db_engine, user_id, "Never happened.", commit=False)
    assert notifications.deliver_due().sent == 0
    assert smtp.messages == [] and outbox(db_engine) == []
    with Session(db_engine) as session:
        assert session.exec(select(Notification)).all() == []


def test_without_smtp_only_the_in_app_message_is_written(db_engine, user_id, settings_env):
    settings_env(SMTP_URL=None)
    tell(db_engine, user_id, "In the app only.")
    assert outbox(db_engine) == []
    with Session(db_engine) as session:
        assert notifications.recent_messages(session, user_id=user_id) == ["In the app only."]


def test_a_failed_send_is_retried_later_and_given_up_after_the_last_attempt(
    db_engine, user_id, smtp, settings_env
):
    port = smtp.port
    settings_env(SMTP_URL="smtp://127.0.0.1:1")  # nothing listens there
    tell(db_engine, user_id, "Retry me.")
    assert notifications.deliver_due().retrying == 1
    [row] = outbox(db_engine)
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.next_attempt_at > utcnow() + timedelta(seconds=1)
    assert notifications.deliver_due().retrying == 0  # not due yet

    def make_due() -> None:
        with Session(db_engine) as session:
            due = session.exec(select(OutboxEmail)).one()
            due.next_attempt_at = utcnow()
            session.add(due)
            session.commit()

    # The server comes back: the next due round delivers it.
    settings_env(SMTP_URL=f"smtp://127.0.0.1:{port}")
    make_due()
    assert notifications.deliver_due().sent == 1
    assert len(smtp.messages) == 1

    # Another one that never gets through is marked failed after MAX_ATTEMPTS.
    settings_env(SMTP_URL="smtp://127.0.0.1:1")
    tell(db_engine, user_id, "Give up on me.")
    results = []
    for _ in range(notifications.MAX_ATTEMPTS):
        with Session(db_engine) as session:
            for pending in session.exec(select(OutboxEmail).where(OutboxEmail.status == "pending")):
                pending.next_attempt_at = utcnow()
                session.add(pending)
            session.commit()
        results.append(notifications.deliver_due())
    assert [r.failed for r in results] == [0] * (notifications.MAX_ATTEMPTS - 1) + [1]
    assert outbox(db_engine)[-1].status == "failed"


def test_two_workers_delivering_at_once_send_each_email_once(db_engine, user_id, smtp):
    smtp.delay = 0.05  # each SMTP conversation takes a while, so the two rounds overlap
    for n in range(6):
        tell(db_engine, user_id, f"Message {n}.")
    start = threading.Barrier(2)
    results: list[notifications.Delivery] = []

    def worker() -> None:
        start.wait()
        results.append(notifications.deliver_due())

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.sent for r in results) == 6
    assert sorted(m.split("Message ")[1][0] for m in smtp.messages) == list("012345")
    assert all(row.status == "sent" and row.attempts == 1 for row in outbox(db_engine))
