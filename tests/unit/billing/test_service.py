"""`billing/service.py` at its seams: no Stripe server, and proof that none was asked."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import stripe

from subscription_app import notifications
from subscription_app.billing import repository, service
from subscription_app.billing.errors import BillingError

# Payment method ids ----------------------------------------------------------------------


@pytest.mark.parametrize("good", ["pm_1Abc", "pm_card_visa", "pm_" + "a" * 200])
def test_a_payment_method_id_of_the_right_form_is_accepted(good):
    assert service.validate_payment_method_id(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "pm_",
        "pm_" + "a" * 201,
        "cus_123",
        "card_123",
        "PM_123",
        " pm_123",
        "pm_12 3",
        "pm_123;drop",
        "pm_123/../cus_1",
        None,
        123,
        ["pm_123"],
    ],
)
def test_anything_else_is_refused_as_invalid(bad):
    with pytest.raises(BillingError) as refused:
        service.validate_payment_method_id(bad)
    assert refused.value.kind == "invalid"
    assert "pm_" in refused.value.message


def test_a_payment_method_id_with_a_trailing_newline_is_refused():
    with pytest.raises(BillingError) as refused:
        service.validate_payment_method_id("pm_123\n")
    assert refused.value.kind == "invalid"


# Translating Stripe's errors ---------------------------------------------------------------


def _card_error(code: str, decline_code: str | None = None, message: str | None = None):
    body = {"type": "card_error", "code": code, "message": message or "Stripe's own words"}
    if decline_code:
        body["decline_code"] = decline_code
    return stripe.CardError(
        message, param=None, code=code, http_status=402, json_body={"error": body}
    )


@pytest.mark.parametrize("decline_code", sorted(service.MESSAGES))
def test_a_declined_card_gets_our_message_for_its_decline_code(decline_code):
    error = service._translate(_card_error("card_declined", decline_code, "Declined."))
    assert isinstance(error, BillingError)
    assert error.kind == "card"
    assert error.message == service.MESSAGES[decline_code]


def test_a_card_error_without_decline_code_is_read_by_its_code():
    error = service._translate(_card_error("expired_card", message="Your card has expired."))
    assert (error.kind, error.message) == ("card", service.MESSAGES["expired_card"])


def test_an_unknown_decline_code_keeps_stripes_user_message():
    error = service._translate(
        _card_error("card_declined", "do_not_honor_new", "Stripe says: try later.")
    )
    assert (error.kind, error.message) == ("card", "Stripe says: try later.")


def test_an_unknown_decline_without_a_message_reads_as_a_decline():
    error = service._translate(stripe.CardError(None, param=None, code="brand_new_code"))
    assert (error.kind, error.message) == ("card", service.MESSAGES["card_declined"])


def test_stripe_unreachable_means_unavailable():
    error = service._translate(stripe.APIConnectionError("Connection reset by peer"))
    assert error.kind == "unavailable"
    assert error.message == service.UNAVAILABLE


def test_other_stripe_failures_mean_unavailable_without_their_text():
    error = service._translate(stripe.APIError("Internal error req_123 sk_test_secret"))
    assert (error.kind, error.message) == ("unavailable", service.UNAVAILABLE)


def test_a_missing_resource_is_reported_without_stripes_text():
    exc = stripe.InvalidRequestError(
        "No such PaymentMethod: 'pm_SomeoneElses'", param="payment_method", code="resource_missing"
    )
    error = service._translate(exc)
    assert error.kind == "invalid"
    assert error.message == "That payment method was not found."


def test_another_invalid_request_is_invalid_without_stripes_text():
    exc = stripe.InvalidRequestError(
        "Invalid integer: cus_Secret for customer", param="customer", code="parameter_invalid"
    )
    error = service._translate(exc)
    assert error.kind == "invalid"
    assert "cus_Secret" not in error.message


# Cancel and resume without a live subscription -----------------------------------------------


def _apply(session, user, snapshot) -> None:
    repository.apply_snapshot(session, user_id=user.id, snapshot=snapshot, our_plan=True)
    session.commit()


@pytest.mark.parametrize("at_period_end", [True, False])
def test_cancel_without_a_subscription_is_a_conflict(session, make_user, no_stripe, at_period_end):
    user = make_user()
    with pytest.raises(BillingError) as refused:
        service.cancel_subscription(session=session, user=user, at_period_end=at_period_end)
    assert refused.value.kind == "conflict"
    assert refused.value.message == "You have no active subscription to cancel."


@pytest.mark.parametrize("status", ["canceled", "incomplete", "incomplete_expired"])
def test_cancel_of_a_subscription_that_is_not_live_is_a_conflict(
    session, make_user, make_snapshot, no_stripe, status
):
    user = make_user()
    _apply(session, user, make_snapshot(status=status))
    with pytest.raises(BillingError) as refused:
        service.cancel_subscription(session=session, user=user, at_period_end=False)
    assert refused.value.kind == "conflict"


def test_resume_without_a_subscription_is_a_conflict(session, make_user, no_stripe):
    user = make_user()
    with pytest.raises(BillingError) as refused:
        service.resume_subscription(session=session, user=user)
    assert refused.value.kind == "conflict"
    assert "nothing to undo" in refused.value.message


def test_resume_of_a_subscription_not_set_to_end_is_a_conflict(
    session, make_user, make_snapshot, no_stripe
):
    user = make_user()
    _apply(session, user, make_snapshot())
    with pytest.raises(BillingError) as refused:
        service.resume_subscription(session=session, user=user)
    assert refused.value.kind == "conflict"
    assert "nothing to undo" in refused.value.message


def test_cancelling_again_at_period_end_names_the_end_date(
    session, make_user, make_snapshot, no_stripe
):
    user = make_user()
    _apply(session, user, make_snapshot(cancel_at_period_end=True))
    with pytest.raises(BillingError) as refused:
        service.cancel_subscription(session=session, user=user, at_period_end=True)
    assert refused.value.kind == "conflict"
    assert refused.value.message == (
        "Your subscription is already set to end on November 22, 2026."
    )


def test_cancelling_again_without_a_known_end_date_says_the_end_of_the_period(
    session, make_user, make_snapshot, no_stripe
):
    user = make_user()
    _apply(session, user, make_snapshot(cancel_at_period_end=True, current_period_end=None))
    with pytest.raises(BillingError) as refused:
        service.cancel_subscription(session=session, user=user, at_period_end=True)
    assert refused.value.message == (
        "Your subscription is already set to end on the end of the period."
    )


def test_cancelling_now_is_not_refused_when_set_to_end(
    session, make_user, make_snapshot, monkeypatch
):
    """Set to end at period end, the person may still end it at once: that goes to Stripe."""
    user = make_user()
    _apply(session, user, make_snapshot(cancel_at_period_end=True))
    asked = []

    def _record_change(*, call, subscription_id, **_):
        asked.append(subscription_id)
        raise stripe.APIConnectionError("offline")

    monkeypatch.setattr(service.sync, "change_subscription", _record_change)
    with pytest.raises(BillingError) as refused:
        service.cancel_subscription(session=session, user=user, at_period_end=False)
    assert asked == ["sub_1TestAbc"]
    assert refused.value.kind == "unavailable"


# The dashboard ------------------------------------------------------------------------------


def test_the_dashboard_of_a_new_user_is_empty(session, make_user):
    view = service.dashboard(session=session, user=make_user())
    assert view.subscription is None
    assert view.messages == []
    assert view.version == "-/0"


def test_the_dashboard_shows_the_subscription_and_newest_messages_first(
    session, make_user, make_snapshot
):
    user, other = make_user("me@example.com"), make_user("other@example.com")
    _apply(session, user, make_snapshot())
    for text in ("first", "second", "third"):
        notifications.tell(session, user_id=user.id, kind="info", text=text)
    notifications.tell(session, user_id=other.id, kind="info", text="not yours")
    session.commit()

    view = service.dashboard(session=session, user=user)

    assert view.subscription == repository.current_subscription(session, user.id)
    assert view.subscription.status == "active"
    assert view.subscription.renews_on == "November 22, 2026"
    assert view.messages == ["third", "second", "first"]


def test_the_dashboard_version_changes_with_a_message_or_the_subscription(
    session, make_user, make_snapshot, clock, monkeypatch
):
    monkeypatch.setattr(repository, "utcnow", clock)
    user = make_user()
    _apply(session, user, make_snapshot())
    version = service.dashboard(session=session, user=user).version
    assert service.dashboard(session=session, user=user).version == version  # stable

    notifications.tell(session, user_id=user.id, kind="info", text="hello")
    session.commit()
    with_message = service.dashboard(session=session, user=user).version
    assert with_message != version

    clock.advance(1)
    _apply(session, user, make_snapshot())  # the same state: no change
    assert service.dashboard(session=session, user=user).version == with_message

    _apply(session, user, make_snapshot(status="past_due"))
    changed = service.dashboard(session=session, user=user)
    assert changed.version != with_message
    assert changed.subscription.past_due


# Card-testing limit on SetupIntents ------------------------------------------------------------


class _FakeStripe:
    """Just enough of a StripeClient for `create_setup_intent`: counts what it was asked."""

    def __init__(self) -> None:
        self.setup_intents_made = 0
        self.v1 = SimpleNamespace(
            customers=SimpleNamespace(create=self._customer),
            setup_intents=SimpleNamespace(create=self._setup_intent),
        )

    def _customer(self, params, options):
        return SimpleNamespace(id="cus_FakeCustomer")

    def _setup_intent(self, params):
        self.setup_intents_made += 1
        return SimpleNamespace(client_secret=f"seti_{self.setup_intents_made}_secret_x")


def _refuse_stripe():
    pytest.fail("Stripe was asked for a SetupIntent over the limit")


def test_setup_intents_over_the_limit_are_refused_before_stripe(
    session, make_user, settings_env, monkeypatch
):
    settings_env(RATE_LIMIT_SETUP_INTENTS_PER_ACCOUNT="2")
    user = make_user()
    fake = _FakeStripe()
    monkeypatch.setattr(service, "get_client", lambda: fake)

    assert service.create_setup_intent(session=session, user=user) == "seti_1_secret_x"
    assert service.create_setup_intent(session=session, user=user) == "seti_2_secret_x"

    monkeypatch.setattr(service, "get_client", _refuse_stripe)
    with pytest.raises(BillingError) as refused:
        service.create_setup_intent(session=session, user=user)
    assert refused.value.kind == "limited"
    assert 0 < refused.value.retry_after <= 3600
    assert fake.setup_intents_made == 2


def test_the_setup_intent_limit_per_address_covers_every_account_there(
    session, make_user, settings_env, monkeypatch
):
    settings_env(RATE_LIMIT_SETUP_INTENTS_PER_ADDRESS="1")
    first, second = make_user("one@example.com"), make_user("two@example.com")
    fake = _FakeStripe()
    monkeypatch.setattr(service, "get_client", lambda: fake)
    service.create_setup_intent(session=session, user=first, client_address="203.0.113.7")

    monkeypatch.setattr(service, "get_client", _refuse_stripe)
    with pytest.raises(BillingError) as refused:
        service.create_setup_intent(session=session, user=second, client_address="203.0.113.7")
    assert refused.value.kind == "limited"
    assert refused.value.retry_after > 0
    assert fake.setup_intents_made == 1


def test_a_held_setup_intent_is_handed_back_uncounted_unless_card_attempts_are_spent(
    session, make_user, settings_env, monkeypatch
):
    settings_env(RATE_LIMIT_SETUP_INTENTS_PER_ACCOUNT="1", RATE_LIMIT_CARD_ATTEMPTS_PER_ACCOUNT="1")
    user = make_user()
    fake = _FakeStripe()
    monkeypatch.setattr(service, "get_client", lambda: fake)
    held = service.create_setup_intent(session=session, user=user)

    # The plan page prepared it; the checkout page gets it back, again and again, without
    # Stripe and without spending the (spent) SetupIntent allowance.
    monkeypatch.setattr(service, "get_client", _refuse_stripe)
    for _ in range(3):
        assert service.create_setup_intent(session=session, user=user, reuse=held) == held
    assert fake.setup_intents_made == 1

    # No card attempts left: no card form, not even with the one held.
    service.record_card_failure(user=user, client_address=None)
    with pytest.raises(BillingError) as refused:
        service.create_setup_intent(session=session, user=user, reuse=held)
    assert refused.value.kind == "limited"
