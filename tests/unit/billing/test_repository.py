"""`billing/repository.py`: the only code that writes billing rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlmodel import select

from subscription_app import crypto
from subscription_app.billing import repository
from subscription_app.billing.reader import read_subscription
from subscription_app.models import BillingCustomer, Subscription
from tests.conftest import stripe_fixture

# apply_snapshot ---------------------------------------------------------------------------


def _row(session, subscription_id: str) -> Subscription:
    session.expire_all()
    rows = [
        r
        for r in session.exec(select(Subscription)).all()
        if crypto.decrypt(r.stripe_subscription_id_enc, purpose=crypto.Purpose.STRIPE_ID)
        == subscription_id
    ]
    assert len(rows) == 1, f"expected one row for {subscription_id}, found {len(rows)}"
    return rows[0]


def test_apply_snapshot_creates_a_row_from_stripes_example_subscription(session, make_user):
    user = make_user()
    snapshot = read_subscription(stripe_fixture("subscription"))

    assert repository.apply_snapshot(session, user_id=user.id, snapshot=snapshot, our_plan=True)
    session.commit()

    row = _row(session, snapshot.id)
    assert row.user_id == user.id
    assert row.status == "active"
    assert row.price_id == "price_1PgafmB7WZ01zgkW6dKueIc5"
    assert row.started_at == snapshot.started_at
    assert row.current_period_end == snapshot.current_period_end
    assert row.cancel_at_period_end is True
    assert row.canceled_at == snapshot.canceled_at
    assert row.ended_at == snapshot.ended_at
    assert row.activated is True
    assert row.our_plan is True
    assert repository.user_id_for_subscription(session, snapshot.id) == user.id
    assert repository.is_our_plan(session, snapshot.id)


def test_applying_the_same_snapshot_twice_changes_nothing_the_second_time(
    session, make_user, make_snapshot
):
    user = make_user()
    snapshot = make_snapshot()
    assert repository.apply_snapshot(session, user_id=user.id, snapshot=snapshot, our_plan=True)
    session.commit()
    updated_at = _row(session, snapshot.id).updated_at

    assert not repository.apply_snapshot(session, user_id=user.id, snapshot=snapshot, our_plan=True)
    session.commit()
    assert _row(session, snapshot.id).updated_at == updated_at
    assert repository.attempt_number(session, user.id) == 1


def test_a_changed_snapshot_updates_the_row(session, make_user, make_snapshot):
    user = make_user()
    repository.apply_snapshot(session, user_id=user.id, snapshot=make_snapshot(), our_plan=True)
    session.commit()

    changed = make_snapshot(cancel_at_period_end=True, canceled_at=make_snapshot().started_at)
    assert repository.apply_snapshot(session, user_id=user.id, snapshot=changed, our_plan=True)
    session.commit()

    row = _row(session, changed.id)
    assert row.cancel_at_period_end is True
    assert row.canceled_at == changed.canceled_at


def test_only_if_new_does_not_overwrite_an_existing_row(session, make_user, make_snapshot):
    user = make_user()
    repository.apply_snapshot(session, user_id=user.id, snapshot=make_snapshot(), our_plan=True)
    session.commit()

    older_answer = make_snapshot(status="incomplete", current_period_end=None)
    assert not repository.apply_snapshot(
        session, user_id=user.id, snapshot=older_answer, our_plan=True, only_if_new=True
    )
    session.commit()

    row = _row(session, older_answer.id)
    assert row.status == "active"
    assert row.current_period_end == make_snapshot().current_period_end


def test_only_if_new_records_a_row_when_there_is_none(session, make_user, make_snapshot):
    user = make_user()
    assert repository.apply_snapshot(
        session,
        user_id=user.id,
        snapshot=make_snapshot(status="incomplete"),
        our_plan=True,
        only_if_new=True,
    )
    session.commit()
    assert _row(session, make_snapshot().id).status == "incomplete"


def test_another_price_is_stored_but_neither_shown_nor_counted(session, make_user, make_snapshot):
    user = make_user()
    other = make_snapshot(id="sub_otherPrice", price_id="price_elsewhere")
    assert repository.apply_snapshot(session, user_id=user.id, snapshot=other, our_plan=False)
    session.commit()

    assert _row(session, other.id).our_plan is False
    assert repository.current_subscription(session, user.id) is None
    assert repository.live_subscription(session, user.id) is None
    assert repository.open_subscriptions(session, user.id) == []
    assert not repository.is_our_plan(session, other.id)

    # Nor does it block a subscription to our plan.
    ours = make_snapshot(id="sub_ours")
    assert repository.apply_snapshot(session, user_id=user.id, snapshot=ours, our_plan=True)
    session.commit()
    assert repository.open_subscriptions(session, user.id) == [
        repository.OpenSubscription("sub_ours", "active")
    ]


def test_a_second_open_subscription_for_one_user_is_refused(session, make_user, make_snapshot):
    user = make_user()
    repository.apply_snapshot(
        session, user_id=user.id, snapshot=make_snapshot(id="sub_first"), our_plan=True
    )
    session.commit()

    with pytest.raises(repository.SecondOpenSubscription):
        repository.apply_snapshot(
            session,
            user_id=user.id,
            snapshot=make_snapshot(id="sub_second", status="incomplete"),
            our_plan=True,
        )
    # The caller's transaction is still usable (sync reads the other open row next).
    assert repository.open_subscriptions(session, user.id) == [
        repository.OpenSubscription("sub_first", "active")
    ]
    assert repository.user_id_for_subscription(session, "sub_second") is None


def test_an_existing_row_becoming_a_second_open_subscription_is_refused(
    session, make_user, make_snapshot
):
    user = make_user()
    elsewhere = make_snapshot(id="sub_elsewhere", price_id="price_other")
    repository.apply_snapshot(session, user_id=user.id, snapshot=elsewhere, our_plan=False)
    repository.apply_snapshot(
        session, user_id=user.id, snapshot=make_snapshot(id="sub_ours"), our_plan=True
    )
    session.commit()

    # The other subscription now counts as our plan: two open ones for one person.
    with pytest.raises(repository.SecondOpenSubscription):
        repository.apply_snapshot(session, user_id=user.id, snapshot=elsewhere, our_plan=True)

    assert repository.open_subscriptions(session, user.id) == [
        repository.OpenSubscription("sub_ours", "active")
    ]


def test_open_subscriptions_lists_live_and_incomplete_but_not_ended(
    session, make_user, make_snapshot
):
    user = make_user()
    repository.apply_snapshot(
        session,
        user_id=user.id,
        snapshot=make_snapshot(id="sub_gone", status="canceled"),
        our_plan=True,
    )
    repository.apply_snapshot(
        session,
        user_id=user.id,
        snapshot=make_snapshot(id="sub_pending", status="incomplete"),
        our_plan=True,
    )
    session.commit()
    assert repository.open_subscriptions(session, user.id) == [
        repository.OpenSubscription("sub_pending", "incomplete")
    ]


# Customers ---------------------------------------------------------------------------------


def test_save_customer_keeps_the_first_customer(session, make_user):
    user = make_user()
    assert repository.save_customer(session, user.id, "cus_First1") == "cus_First1"
    session.commit()

    assert repository.save_customer(session, user.id, "cus_Second2") == "cus_First1"
    session.commit()

    assert repository.customer_id_for_user(session, user.id) == "cus_First1"
    assert repository.user_id_for_customer(session, "cus_Second2") is None
    assert len(session.exec(select(BillingCustomer)).all()) == 1


def test_customer_ids_round_trip_and_are_stored_encrypted(session, make_user):
    alice, bob = make_user("alice@example.com"), make_user("bob@example.com")
    repository.save_customer(session, alice.id, "cus_AliceSecret1")
    repository.save_customer(session, bob.id, "cus_BobSecret2")
    session.commit()

    assert repository.customer_id_for_user(session, alice.id) == "cus_AliceSecret1"
    assert repository.customer_id_for_user(session, bob.id) == "cus_BobSecret2"
    assert repository.user_id_for_customer(session, "cus_AliceSecret1") == alice.id
    assert repository.user_id_for_customer(session, "cus_BobSecret2") == bob.id
    assert repository.user_id_for_customer(session, "cus_Unknown") is None

    stored = session.execute(text("SELECT * FROM billing_customer")).mappings().all()
    assert len(stored) == 2
    for row in stored:
        for column, value in row.items():
            assert "cus_" not in str(value), f"{column} holds a Stripe id in clear"


def test_customer_id_for_a_user_without_one_is_none(session, make_user):
    assert repository.customer_id_for_user(session, make_user().id) is None


def test_subscription_rows_hold_no_stripe_id_in_clear(session, make_user, make_snapshot):
    user = make_user()
    snapshot = make_snapshot(id="sub_ClearText9", customer_id="cus_ClearText9")
    repository.apply_snapshot(session, user_id=user.id, snapshot=snapshot, our_plan=True)
    session.commit()

    stored = session.execute(text("SELECT * FROM subscription")).mappings().one()
    for column, value in stored.items():
        assert "ClearText9" not in str(value), f"{column} holds a Stripe id in clear"
    assert repository.latest_subscription_id(session, user.id) == "sub_ClearText9"


# Reading subscriptions ------------------------------------------------------------------------


def test_live_subscription_gives_id_and_view_only_while_live(session, make_user, make_snapshot):
    user = make_user()
    assert repository.live_subscription(session, user.id) is None

    repository.apply_snapshot(
        session, user_id=user.id, snapshot=make_snapshot(status="incomplete"), our_plan=True
    )
    session.commit()
    assert repository.live_subscription(session, user.id) is None

    repository.apply_snapshot(session, user_id=user.id, snapshot=make_snapshot(), our_plan=True)
    session.commit()
    live = repository.live_subscription(session, user.id)
    assert live is not None
    assert live.id == make_snapshot().id
    assert live.view.status == "active"
    assert live.view.is_live
    assert live.view.current_period_end == make_snapshot().current_period_end

    repository.apply_snapshot(
        session, user_id=user.id, snapshot=make_snapshot(status="canceled"), our_plan=True
    )
    session.commit()
    assert repository.live_subscription(session, user.id) is None


def test_current_subscription_prefers_the_live_row_over_a_newer_one(
    session, make_user, make_snapshot
):
    user = make_user()
    # An earlier subscription that ran and was cancelled...
    repository.apply_snapshot(
        session, user_id=user.id, snapshot=make_snapshot(id="sub_old"), our_plan=True
    )
    repository.apply_snapshot(
        session,
        user_id=user.id,
        snapshot=make_snapshot(id="sub_old", status="canceled"),
        our_plan=True,
    )
    # ...and today's live one.
    repository.apply_snapshot(
        session, user_id=user.id, snapshot=make_snapshot(id="sub_live"), our_plan=True
    )
    session.commit()
    # The cancelled one is recorded later (its events arrived late): newest, but not live.
    old = _row(session, "sub_old")
    old.created_at = _row(session, "sub_live").created_at + timedelta(days=1)
    session.add(old)
    session.commit()

    current = repository.current_subscription(session, user.id)
    assert current is not None
    assert current.status == "active"
    assert repository.latest_subscription_id(session, user.id) == "sub_live"


def test_current_subscription_without_a_live_one_is_the_newest_shown(
    session, make_user, make_snapshot
):
    user = make_user()
    assert repository.current_subscription(session, user.id) is None
    repository.apply_snapshot(
        session, user_id=user.id, snapshot=make_snapshot(id="sub_a"), our_plan=True
    )
    repository.apply_snapshot(
        session,
        user_id=user.id,
        snapshot=make_snapshot(id="sub_a", status="canceled"),
        our_plan=True,
    )
    session.commit()

    current = repository.current_subscription(session, user.id)
    assert current is not None
    assert current.status == "canceled"
    assert current.status_label == "Canceled"


def test_a_never_activated_expired_attempt_is_not_shown(session, make_user, make_snapshot):
    user = make_user()
    # The person's earlier subscription ran and ended.
    repository.apply_snapshot(
        session, user_id=user.id, snapshot=make_snapshot(id="sub_ran"), our_plan=True
    )
    repository.apply_snapshot(
        session,
        user_id=user.id,
        snapshot=make_snapshot(id="sub_ran", status="canceled"),
        our_plan=True,
    )
    session.commit()
    # A later attempt waited for 3-D Secure (shown meanwhile), then expired.
    attempt = make_snapshot(id="sub_attempt", status="incomplete")
    repository.apply_snapshot(session, user_id=user.id, snapshot=attempt, our_plan=True)
    session.commit()
    old = _row(session, "sub_ran")
    newer = _row(session, "sub_attempt")
    newer.created_at = old.created_at + timedelta(minutes=1)
    session.add(newer)
    session.commit()
    assert repository.current_subscription(session, user.id).status == "incomplete"

    repository.apply_snapshot(
        session,
        user_id=user.id,
        snapshot=make_snapshot(id="sub_attempt", status="incomplete_expired"),
        our_plan=True,
    )
    session.commit()

    current = repository.current_subscription(session, user.id)
    assert current is not None
    assert current.status == "canceled"
    assert _row(session, "sub_attempt").status == "incomplete_expired"  # still stored


def test_an_expired_first_attempt_alone_shows_no_subscription(session, make_user, make_snapshot):
    user = make_user()
    repository.apply_snapshot(
        session,
        user_id=user.id,
        snapshot=make_snapshot(status="incomplete_expired"),
        our_plan=True,
    )
    session.commit()
    assert repository.current_subscription(session, user.id) is None
    assert repository.latest_subscription_id(session, user.id) is None


def test_attempt_number_counts_every_recorded_subscription_of_the_user(
    session, make_user, make_snapshot
):
    alice, bob = make_user("alice@example.com"), make_user("bob@example.com")
    assert repository.attempt_number(session, alice.id) == 0

    repository.apply_snapshot(
        session,
        user_id=alice.id,
        snapshot=make_snapshot(id="sub_a1", status="incomplete_expired"),
        our_plan=True,
    )
    assert repository.attempt_number(session, alice.id) == 1
    repository.apply_snapshot(
        session,
        user_id=alice.id,
        snapshot=make_snapshot(id="sub_a2", price_id="price_other"),
        our_plan=False,
    )
    repository.apply_snapshot(
        session, user_id=alice.id, snapshot=make_snapshot(id="sub_a3"), our_plan=True
    )
    repository.apply_snapshot(
        session, user_id=bob.id, snapshot=make_snapshot(id="sub_b1"), our_plan=True
    )
    session.commit()

    assert repository.attempt_number(session, alice.id) == 3
    assert repository.attempt_number(session, bob.id) == 1
    # Re-applying an existing subscription is not a new attempt.
    repository.apply_snapshot(
        session,
        user_id=alice.id,
        snapshot=make_snapshot(id="sub_a3", status="past_due"),
        our_plan=True,
    )
    session.commit()
    assert repository.attempt_number(session, alice.id) == 3


def test_last_changed_at_follows_the_users_latest_change(
    session, make_user, make_snapshot, clock, monkeypatch
):
    monkeypatch.setattr(repository, "utcnow", clock)
    alice, bob = make_user("alice@example.com"), make_user("bob@example.com")
    assert repository.last_changed_at(session, alice.id) is None

    created = clock.now
    repository.apply_snapshot(session, user_id=alice.id, snapshot=make_snapshot(), our_plan=True)
    session.commit()
    assert repository.last_changed_at(session, alice.id) == created

    clock.advance(30)
    repository.apply_snapshot(session, user_id=alice.id, snapshot=make_snapshot(), our_plan=True)
    session.commit()
    assert repository.last_changed_at(session, alice.id) == created  # nothing changed

    changed = clock.advance(30)
    repository.apply_snapshot(
        session, user_id=alice.id, snapshot=make_snapshot(status="past_due"), our_plan=True
    )
    session.commit()
    assert repository.last_changed_at(session, alice.id) == changed
    assert repository.last_changed_at(session, bob.id) is None

    # Another user's later change is not Alice's.
    clock.advance(30)
    repository.apply_snapshot(
        session, user_id=bob.id, snapshot=make_snapshot(id="sub_bob"), our_plan=True
    )
    session.commit()
    assert repository.last_changed_at(session, alice.id) == changed


def test_ever_subscribed_once_a_subscription_went_live(session, make_user, make_snapshot):
    """What "Manage billing" and the portal go by: not a first payment still waiting."""
    from subscription_app.billing import service

    user = make_user()
    assert not repository.ever_subscribed(session, user.id)
    repository.apply_snapshot(
        session, user_id=user.id, snapshot=make_snapshot(status="incomplete"), our_plan=True
    )
    session.commit()
    assert not repository.ever_subscribed(session, user.id)
    assert service.dashboard(session=session, user=user).ever_subscribed is False
    for status in ("active", "canceled"):  # and it stays so once ended
        repository.apply_snapshot(
            session, user_id=user.id, snapshot=make_snapshot(status=status), our_plan=True
        )
        session.commit()
        assert repository.ever_subscribed(session, user.id)
        assert service.dashboard(session=session, user=user).ever_subscribed is True
