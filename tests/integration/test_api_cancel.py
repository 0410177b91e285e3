"""Cancelling and resuming over REST against the emulator; email through a local SMTP server."""

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from subscription_app import notifications
from subscription_app.api import create_api
from subscription_app.models import Notification, OutboxEmail
from tests.conftest import free_port
from tests.integration.conftest import auth_headers, subscribe


@pytest.fixture
def api(db_engine, stripe_env):
    with TestClient(create_api(), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def subscribed(api, make_payment_method):
    headers = auth_headers(api, "member@example.com")
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    return headers


def cancel(api, headers, **body):
    return api.post("/api/v1/subscriptions/cancel", json=body, headers=headers)


def test_cancel_at_period_end_then_undo(api, subscribed, smtp):
    response = cancel(api, subscribed, at_period_end=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["subscription"]["status"] == "active"
    assert body["subscription"]["cancel_at_period_end"] is True
    assert "keep access until" in body["message"]

    again = cancel(api, subscribed, at_period_end=True)
    assert again.status_code == 409
    assert "already set to end" in again.json()["detail"]

    resumed = api.post("/api/v1/subscriptions/resume", headers=subscribed)
    assert resumed.status_code == 200
    assert resumed.json()["subscription"]["cancel_at_period_end"] is False
    assert api.post("/api/v1/subscriptions/resume", headers=subscribed).status_code == 409

    # The user is told by email each time, through a real SMTP conversation, once the outbox
    # is delivered (each worker's lifespan task does this after the request committed).
    assert smtp.messages == []
    assert notifications.deliver_due().sent == 2
    assert len(smtp.messages) == 2
    assert "keep access until" in smtp.messages[0]
    assert "To: member@example.com" in smtp.messages[0]
    assert "renew as usual" in smtp.messages[1]


def test_cancel_now_ends_it_and_a_second_cancel_is_a_clear_409(api, subscribed):
    response = cancel(api, subscribed, at_period_end=False)
    assert response.status_code == 200
    assert response.json()["subscription"]["status"] == "canceled"
    assert response.json()["message"] == "Your subscription is cancelled and has ended."
    again = cancel(api, subscribed, at_period_end=False)
    assert again.status_code == 409
    assert again.json() == {"detail": "You have no active subscription to cancel."}
    me = api.get("/api/v1/subscriptions/me", headers=subscribed).json()["subscription"]
    assert me["status"] == "canceled"


def test_default_is_at_period_end(api, subscribed):
    response = api.post("/api/v1/subscriptions/cancel", json={}, headers=subscribed)
    assert response.status_code == 200
    assert response.json()["subscription"]["cancel_at_period_end"] is True


def test_no_body_at_all_is_at_period_end_too(api, subscribed):
    response = api.post("/api/v1/subscriptions/cancel", headers=subscribed)
    assert response.status_code == 200, response.text
    assert response.json()["subscription"]["cancel_at_period_end"] is True


def test_cancel_without_subscription_and_other_users_are_untouched(api, subscribed):
    other = auth_headers(api, "other@example.com")
    response = cancel(api, other, at_period_end=False)
    assert response.status_code == 409
    assert "no active subscription" in response.json()["detail"]
    mine = api.get("/api/v1/subscriptions/me", headers=subscribed).json()["subscription"]
    assert mine["status"] == "active" and mine["cancel_at_period_end"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"at_period_end": "soon"},
        {"at_period_end": None},
        {"when": "now"},
        [1],
        # Not a JSON boolean: refused, never read as "false" (which would end it now).
        {"at_period_end": "no"},
        {"at_period_end": "false"},
        {"at_period_end": 0},
        {"at_period_end": 0.0},
    ],
)
def test_bad_cancel_bodies_are_422_and_change_nothing(api, subscribed, body):
    response = api.post("/api/v1/subscriptions/cancel", json=body, headers=subscribed)
    assert response.status_code == 422
    mine = api.get("/api/v1/subscriptions/me", headers=subscribed).json()["subscription"]
    assert mine["status"] == "active" and mine["cancel_at_period_end"] is False


def test_cancel_requires_a_token(api):
    assert api.post("/api/v1/subscriptions/cancel", json={}).status_code == 401


def test_unreachable_smtp_does_not_break_cancelling(api, subscribed, settings_env, db_engine):
    settings_env(SMTP_URL=f"smtp://127.0.0.1:{free_port()}")
    response = cancel(api, subscribed, at_period_end=True)
    assert response.status_code == 200
    assert notifications.deliver_due().retrying == 1  # connection refused: tried, kept
    with Session(db_engine) as session:
        # The in-app message was saved, and the email waits to be retried later.
        texts = session.exec(select(Notification.text)).all()
        assert any("keep access until" in text for text in texts)
        queued = session.exec(select(OutboxEmail)).one()
        assert (queued.status, queued.attempts, queued.sent_at) == ("pending", 1, None)
    assert notifications.deliver_due().retrying == 0  # not due again yet


def _stripe_subscription_id(session) -> str:
    from subscription_app import crypto
    from subscription_app.models import Subscription

    session.rollback()
    row = session.exec(select(Subscription)).one()
    return crypto.decrypt(row.stripe_subscription_id_enc, purpose=crypto.Purpose.STRIPE_ID)


@pytest.mark.parametrize("at_period_end", [False, True])
def test_cancel_of_a_subscription_stripe_already_ended_says_so_and_records_it(
    api, subscribed, session, stripe_client, at_period_end
):
    """Ended in Stripe (the dashboard, the portal, dunning) before its webhook reached us:
    a cancel is answered 'already ended' (not a payment-method error) and the row is
    brought up to date at once."""
    stripe_client.v1.subscriptions.cancel(_stripe_subscription_id(session))
    response = cancel(api, subscribed, at_period_end=at_period_end)
    assert response.status_code == 409, response.text
    assert response.json()["detail"] == "Your subscription has already ended."
    mine = api.get("/api/v1/subscriptions/me", headers=subscribed).json()["subscription"]
    assert mine["status"] == "canceled"


def test_a_second_press_that_read_before_the_first_committed_is_refused(
    api, subscribed, session, monkeypatch
):
    """A double click: the second request read the subscription before the first one's change
    was recorded. Under the lock it sees that change and is refused; the person is told
    once, not twice."""
    from dataclasses import replace

    from subscription_app.billing import repository

    assert cancel(api, subscribed, at_period_end=True).status_code == 200
    real = repository.live_subscription
    reads = []

    def read_before_the_first_committed(session, user_id):
        live = real(session, user_id)
        reads.append(live)
        if len(reads) == 1:  # the read before the lock: as it was before the first press
            return replace(live, view=replace(live.view, cancel_at_period_end=False))
        return live

    monkeypatch.setattr(repository, "live_subscription", read_before_the_first_committed)
    again = cancel(api, subscribed, at_period_end=True)
    assert again.status_code == 409, again.text
    assert "already set to end" in again.json()["detail"]
    session.rollback()
    told = session.exec(select(Notification).where(Notification.kind == "canceled")).all()
    assert len(told) == 1


def test_a_cancellation_made_in_the_portal_in_flexible_billing_mode_shows_and_can_be_undone(
    api, subscribed, session, stripe_client
):
    """Stripe's portal, for a subscription in flexible billing mode (the default for new
    ones since 2025-09-30), schedules the end with `cancel_at` alone: `cancel_at_period_end`
    stays false. It is still set to end: shown so, with its date, and undone by /resume."""
    from subscription_app.billing import sync
    from subscription_app.models import Subscription

    sub_id = _stripe_subscription_id(session)
    user_id = session.exec(select(Subscription)).one().user_id
    ending = stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at": "min_period_end"})
    assert ending.cancel_at_period_end is False and ending.cancel_at is not None
    # What the webhook about it does (it re-reads the subscription from Stripe).
    sync.sync_subscription(session=session, subscription_id=sub_id, user_id=user_id)

    mine = api.get("/api/v1/subscriptions/me", headers=subscribed).json()["subscription"]
    assert mine["status"] == "active" and mine["cancel_at_period_end"] is True
    assert mine["cancel_at"] is not None
    again = cancel(api, subscribed, at_period_end=True)
    assert again.status_code == 409 and "already set to end" in again.json()["detail"]

    resumed = api.post("/api/v1/subscriptions/resume", headers=subscribed)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["subscription"]["cancel_at_period_end"] is False
    assert resumed.json()["subscription"]["cancel_at"] is None
    renewing = stripe_client.v1.subscriptions.retrieve(sub_id)
    assert renewing.cancel_at is None and renewing.cancel_at_period_end is False


def test_a_change_stripe_refuses_on_an_unchanged_subscription_is_not_try_again(
    api, subscribed, monkeypatch, caplog
):
    """Refused for a reason of its own (a subscription schedule manages it, say): not the
    'changed meanwhile, try again' answer, which would never succeed; logged as an error."""
    import logging

    import stripe

    from subscription_app.billing import sync

    def refused(**_):
        raise stripe.InvalidRequestError(
            "This subscription is managed by the subscription schedule", param=None
        )

    monkeypatch.setattr(sync, "change_subscription", refused)
    with caplog.at_level(logging.ERROR):
        response = cancel(api, subscribed, at_period_end=True)
    assert response.status_code == 409, response.text
    assert "did not accept this change" in response.json()["detail"]
    assert "subscription schedule" in caplog.text
    mine = api.get("/api/v1/subscriptions/me", headers=subscribed).json()["subscription"]
    assert mine["status"] == "active" and mine["cancel_at_period_end"] is False


def test_undo_works_when_stripe_ends_it_the_other_way_than_our_row_says(
    api, subscribed, session, stripe_client
):
    """Our row says 'cancel at period end'; in Stripe the portal has since undone that and
    scheduled the end through cancel_at (its webhooks not yet applied). Undo undoes both."""
    sub_id = _stripe_subscription_id(session)
    assert cancel(api, subscribed, at_period_end=True).status_code == 200  # row: classic
    stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": False})
    stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at": "min_period_end"})

    resumed = api.post("/api/v1/subscriptions/resume", headers=subscribed)
    assert resumed.status_code == 200, resumed.text
    renewing = stripe_client.v1.subscriptions.retrieve(sub_id)
    assert renewing.cancel_at is None and renewing.cancel_at_period_end is False
    assert resumed.json()["subscription"]["cancel_at_period_end"] is False
