"""The Reflex states, tested directly (no browser): thin, and never left stuck.

Each state is taken from a real state tree (`State` → `AuthState` → page state), signed in
through a real login session on the test database; the billing service is stubbed at its
seam where a test needs a particular answer or failure.
"""

from __future__ import annotations

import pytest
from reflex.state import State

from subscription_app import accounts
from subscription_app.billing import service
from subscription_app.billing.errors import BillingError
from subscription_app.billing.views import DashboardView, SubscriptionView
from subscription_app.models import utcnow
from subscription_app.state.auth import AuthState
from subscription_app.state.billing import CheckoutState, DashboardState

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """Reflex runs event handlers on asyncio."""
    return "asyncio"


def _substate(root: State, cls: type) -> State:
    return root.get_substate(cls.get_full_name().split("."))


@pytest.fixture
def signed_in(db_engine, session):
    """A state tree whose AuthState belongs to a live login session."""
    user = accounts.register_user(session=session, email="tab@example.com", password="s3cret-pass")
    issued = accounts.issue_token(session=session, user=user)
    session.commit()
    root = State(_reflex_internal_init=True)
    auth = _substate(root, AuthState)
    auth._auth_session_id, auth.user_email = issued.session_id, issued.email
    return root


async def _run(handler, state, *args) -> list:
    """Run an event handler as Reflex would, collecting what it yields or returns."""
    result = handler.fn(state, *args)
    if hasattr(result, "__aiter__"):
        return [update async for update in result]
    return [await result] if hasattr(result, "__await__") else [result]


def _view(**fields) -> SubscriptionView:
    defaults = {
        "status": "active",
        "status_label": "Active",
        "renews_on": "December 22, 2026",
        "is_live": True,
        "current_period_end": utcnow(),
    }
    return SubscriptionView(**{**defaults, **fields})


async def test_dashboard_load_shows_what_the_service_returns(signed_in, monkeypatch):
    monkeypatch.setattr(
        service,
        "dashboard",
        lambda *, session, user: DashboardView(_view(), ["Hello."], "v1"),
    )
    dash = _substate(signed_in, DashboardState)
    await _run(DashboardState.load, dash)
    assert dash.has_subscription and dash.subscription.status_label == "Active"
    assert dash.subscription.renews_on == "December 22, 2026"
    assert dash.messages == ["Hello."] and dash._seen_version == "v1"


async def test_dashboard_without_a_subscription(signed_in):
    dash = _substate(signed_in, DashboardState)
    await _run(DashboardState.load, dash)  # the real service, on the test database
    assert dash.has_subscription is False and dash.subscription.status == ""
    assert dash.load_error == ""


@pytest.mark.parametrize("event", ["confirm_cancel", "undo_cancel"])
async def test_an_unexpected_error_never_leaves_the_buttons_busy(signed_in, monkeypatch, event):
    def broken(**_):
        raise RuntimeError("database went away")

    monkeypatch.setattr(service, "cancel_subscription", broken)
    monkeypatch.setattr(service, "resume_subscription", broken)
    dash = _substate(signed_in, DashboardState)
    dash.cancel_dialog_open = True
    with pytest.raises(RuntimeError):
        await _run(getattr(DashboardState, event), dash)
    assert dash.working is False and dash.cancel_dialog_open is False


async def test_a_refused_cancel_is_shown_and_the_page_refreshed(signed_in, monkeypatch):
    def refuse(**_):
        raise BillingError("You have no active subscription to cancel.", kind="conflict")

    monkeypatch.setattr(service, "cancel_subscription", refuse)
    dash = _substate(signed_in, DashboardState)
    dash.has_subscription = True  # stale: another tab cancelled meanwhile
    updates = await _run(DashboardState.confirm_cancel, dash)
    assert dash.action_error == "You have no active subscription to cancel."
    assert dash.has_subscription is False  # re-read after the refusal
    assert dash.working is False and updates  # a first update showed the busy button


async def test_cancel_and_undo_share_one_path(signed_in, monkeypatch):
    calls = []

    def record(name):
        def _call(**kwargs):
            calls.append((name, kwargs.get("at_period_end")))
            return service.CancelResult(_view(cancel_at_period_end=name == "cancel"), name)

        return _call

    monkeypatch.setattr(service, "cancel_subscription", record("cancel"))
    monkeypatch.setattr(service, "resume_subscription", record("resume"))
    dash = _substate(signed_in, DashboardState)
    await _run(DashboardState.confirm_cancel, dash)
    assert dash.result_message == "cancel"
    await _run(DashboardState.undo_cancel, dash)
    assert dash.result_message == "resume"
    assert calls == [("cancel", True), ("resume", None)]


async def test_a_logged_out_tab_is_sent_to_login_and_runs_nothing(signed_in, session, monkeypatch):
    ran = []
    monkeypatch.setattr(service, "cancel_subscription", lambda **kw: ran.append(kw))
    auth = _substate(signed_in, AuthState)
    assert accounts.revoke_session(session=session, session_id=auth._auth_session_id)
    session.commit()
    dash = _substate(signed_in, DashboardState)
    updates = await _run(DashboardState.confirm_cancel, dash)
    assert ran == [] and auth.user_email == "" and dash.working is False
    assert any("/login" in str(update) for update in updates)


async def test_checkout_unexpected_error_leaves_subscribe_usable(signed_in, monkeypatch):
    def broken(**_):
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "start_subscription", broken)
    checkout = _substate(signed_in, CheckoutState)
    checkout.card_ready, checkout.processing = True, True
    with pytest.raises(RuntimeError):
        await _run(CheckoutState.card_confirmed, checkout, {"payment_method_id": "pm_123"})
    assert checkout.processing is False


async def test_checkout_keeps_busy_only_while_the_bank_checks(signed_in, monkeypatch):
    monkeypatch.setattr(
        service,
        "start_subscription",
        lambda **_: service.SubscribeResult("requires_action", None, "pi_secret_123"),
    )
    checkout = _substate(signed_in, CheckoutState)
    checkout.processing = True
    await _run(CheckoutState.card_confirmed, checkout, {"payment_method_id": "pm_123"})
    assert checkout.processing is True  # 3-D Secure is open in the page
    monkeypatch.setattr(
        service,
        "confirm_subscription",
        lambda **_: service.SubscribeResult("active", _view()),
    )
    await _run(CheckoutState.payment_confirmed, checkout, {})
    assert checkout.processing is False and checkout.succeeded is True


async def test_a_refused_card_shows_stripes_words_and_frees_the_button(signed_in):
    checkout = _substate(signed_in, CheckoutState)
    checkout.processing = True
    await _run(CheckoutState.card_confirmed, checkout, {"error": "Your card number is incomplete."})
    assert checkout.error == "Your card number is incomplete." and checkout.processing is False


async def test_login_errors_are_shown_and_the_form_is_usable_again(db_engine, session):
    accounts.register_user(session=session, email="form@example.com", password="s3cret-pass")
    session.commit()
    auth = _substate(State(_reflex_internal_init=True), AuthState)
    await _run(AuthState.login, auth, {"email": "form@example.com", "password": "wrong-pass"})
    assert auth.form_error == accounts.INVALID_CREDENTIALS_MESSAGE
    assert auth.submitting is False and auth.user_email == ""
    await _run(AuthState.login, auth, {"email": "form@example.com", "password": "s3cret-pass"})
    assert auth.form_error == "" and auth.user_email == "form@example.com"
    assert auth._auth_session_id and auth.submitting is False


async def test_register_logs_the_new_account_in(db_engine):
    auth = _substate(State(_reflex_internal_init=True), AuthState)
    form = {"email": "new@example.com", "password": "s3cret-pass"}
    await _run(AuthState.register, auth, {**form, "confirm_password": "other-pass"})
    assert auth.form_error == "The two passwords do not match." and auth.user_email == ""
    await _run(AuthState.register, auth, {**form, "confirm_password": "s3cret-pass"})
    assert auth.user_email == "new@example.com" and auth.submitting is False
    await _run(AuthState.register, auth, {**form, "confirm_password": "s3cret-pass"})
    assert "already exists" in auth.form_error
