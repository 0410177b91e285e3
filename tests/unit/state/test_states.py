"""The Reflex states, tested directly (no browser): thin, and never left stuck.

Each state is taken from a real state tree (`State` → `AuthState` → page state), signed in
through a real login session on the test database; the billing service is stubbed at its
seam where a test needs a particular answer or failure.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from reflex.istate.data import RouterData
from reflex.state import State
from reflex_base.event import Event
from reflex_base.utils.format import format_event_handler
from sqlalchemy.exc import OperationalError

from subscription_app import accounts, changes, ratelimit, routes, session_cookie
from subscription_app.billing import service
from subscription_app.billing.errors import BillingError
from subscription_app.billing.views import (
    DashboardView,
    InvoiceHistory,
    InvoiceView,
    SubscriptionView,
)
from subscription_app.models import utcnow
from subscription_app.ratelimit import RateLimited
from subscription_app.state import auth as auth_state
from subscription_app.state.auth import AuthState
from subscription_app.state.billing import (
    CANCEL_AT_PERIOD_END,
    CANCEL_NOW,
    CheckoutReturnState,
    CheckoutState,
    DashboardState,
    PlanState,
)
from subscription_app.subscription_app import app

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


@pytest.mark.parametrize("ever_subscribed", [True, False])
async def test_manage_billing_is_offered_to_people_who_have_subscribed(
    signed_in, monkeypatch, ever_subscribed
):
    """As the portal decides: not while the only subscription is a first payment still
    waiting (it would answer "Subscribe first"), but to a past subscriber trying again."""
    view = DashboardView(_view(status="incomplete"), [], "v1", ever_subscribed=ever_subscribed)
    monkeypatch.setattr(service, "dashboard", lambda *, session, user: view)
    dash = _substate(signed_in, DashboardState)
    await _run(DashboardState.load, dash)
    assert dash.has_subscription and dash.can_manage_billing is ever_subscribed


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
    args = (CANCEL_AT_PERIOD_END,) if event == "confirm_cancel" else ()
    with pytest.raises(RuntimeError):
        await _run(getattr(DashboardState, event), dash, *args)
    # The page's busy button and open dialog follow `action_seq`: it moved on.
    assert dash._working is False and dash.action_seq == 1


async def test_a_refused_cancel_is_shown_and_the_page_refreshed(signed_in, monkeypatch):
    def refuse(**_):
        raise BillingError("You have no active subscription to cancel.", kind="conflict")

    monkeypatch.setattr(service, "cancel_subscription", refuse)
    dash = _substate(signed_in, DashboardState)
    dash.has_subscription = True  # stale: another tab cancelled meanwhile
    await _run(DashboardState.confirm_cancel, dash, CANCEL_AT_PERIOD_END)
    assert dash.action_error == "You have no active subscription to cancel."
    assert dash.has_subscription is False  # re-read after the refusal
    assert dash._working is False and dash.action_seq == 1


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
    await _run(DashboardState.confirm_cancel, dash, CANCEL_AT_PERIOD_END)
    assert dash.result_message == "cancel"
    await _run(DashboardState.undo_cancel, dash)
    assert dash.result_message == "resume"
    assert calls == [("cancel", True), ("resume", None)]
    assert dash.action_seq == 2


async def test_a_logged_out_tab_is_sent_to_login_and_runs_nothing(signed_in, session, monkeypatch):
    ran = []
    monkeypatch.setattr(service, "cancel_subscription", lambda **kw: ran.append(kw))
    auth = _substate(signed_in, AuthState)
    assert accounts.revoke_session(session=session, session_id=auth._auth_session_id)
    session.commit()
    dash = _substate(signed_in, DashboardState)
    updates = await _run(DashboardState.confirm_cancel, dash, CANCEL_AT_PERIOD_END)
    assert ran == [] and auth.user_email == "" and dash._working is False
    assert any("/login" in str(update) for update in updates)


def _login(session, email: str) -> tuple:
    """A registered person and a login session of theirs (committed)."""
    user = accounts.register_user(session=session, email=email, password="s3cret-pass")
    issued = accounts.issue_token(session=session, user=user)
    session.commit()
    return user, issued


TAB = "the-tabs-token"


def _router_data(sid: str, cookie: str = "") -> dict:
    """What Reflex's router data says of the websocket connection an event came on."""
    headers = {"cookie": cookie} if cookie else {}
    return {
        "sid": sid,
        "token": TAB,
        "headers": headers,
        "pathname": routes.DASHBOARD,
        "asPath": routes.DASHBOARD,
    }


def _connection(sid: str, cookie: str = "") -> RouterData:
    """What Reflex tells a state of the websocket connection an event came on."""
    return RouterData.from_router_data(_router_data(sid, cookie))


def _arrive(root: State, sid: str, cookie: str = "") -> None:
    """What Reflex does with an event's router data before the app's middleware runs."""
    root.router_data = root._update_router_vars(_router_data(sid, cookie), root.router_data)


@pytest.fixture(autouse=True)
def _sockets():
    """The sockets the app's websocket server holds, as `_connect` opens them."""
    sockets = app.event_namespace.sid_to_token
    before = dict(sockets)
    yield sockets
    sockets.clear()
    sockets.update(before)


async def _connect(root: State, sid: str, cookie: str = "", first: Event | None = None):
    """A websocket connection of the tab opens and sends its first event (hydrate, unless
    `first`), which passes the app's middleware as Reflex runs it; what that answered."""
    app.event_namespace.sid_to_token[sid] = TAB
    _arrive(root, sid, cookie)
    return await app._preprocess(root, first or _hydrate())


async def test_a_tabs_login_is_not_lent_to_another_connection_holding_its_token(
    db_engine, session, monkeypatch
):
    """The Reflex token is no credential: a connection presenting it needs its own cookie."""
    _, issued = _login(session, "t@example.com")
    cancels: list[dict] = []
    monkeypatch.setattr(
        service,
        "cancel_subscription",
        lambda **kwargs: cancels.append(kwargs) or service.CancelResult(None, "Cancelled."),
    )

    root = State(_reflex_internal_init=True)
    root.router = _connection("the-owners-socket")
    auth = _substate(root, AuthState)
    auth._remember(issued.session_id, issued.email)  # logged in on the owner's connection
    dash = _substate(root, DashboardState)

    # The owner's tab closed; someone who read its token connects with it, and no cookie.
    # (Were the tab kept, its login still would not be lent.)
    monkeypatch.setattr(State, "reset", lambda self: None)
    await _connect(root, "someone-elses-socket", first=_event(DashboardState, "confirm_cancel"))
    await _run(DashboardState.confirm_cancel, dash, CANCEL_AT_PERIOD_END)
    assert cancels == [] and auth.logged_in is False

    # The owner's own reconnect carries their cookie: their login goes on.
    auth._remember(issued.session_id, issued.email)
    await _connect(root, "the-owners-new-socket", _cookie(issued))
    await _run(DashboardState.confirm_cancel, dash, CANCEL_AT_PERIOD_END)
    assert len(cancels) == 1 and cancels[0]["user"].email == "t@example.com"


async def test_a_connection_that_sent_no_event_yet_proves_nothing_by_old_headers(
    db_engine, session
):
    """Reflex links a new socket to the tab before its first event, keeping the request
    headers the previous connection left (the owner's cookie). A background event finishing
    meanwhile must not take them for the new connection's."""
    _, issued = _login(session, "stale@example.com")
    root = _logged_in_tab_with_data(issued)
    await _connect(root, "the-owners-socket", _cookie(issued))
    auth = _substate(root, AuthState)
    assert auth._session_ref() == issued.session_id
    # Someone else's socket takes the token up; the headers are still the owner's.
    root.router = _connection("someone-elses-socket", _cookie(issued))
    assert auth._session_ref() == ""
    assert await auth._still_logged_in_as(issued.session_id) is False


def _stalled(answer):
    """A service call Stripe is slow to answer: (stub, entered, release)."""
    entered, release = threading.Event(), threading.Event()

    def stub(**_):
        entered.set()
        assert release.wait(5), "never released"
        return answer

    return stub, entered, release


async def test_a_cancel_ending_after_someone_else_took_the_tab_up_shows_them_nothing(
    db_engine, session, monkeypatch
):
    """The owner pressed Cancel and closed the tab while Stripe answered; someone holding
    the tab's token connected meanwhile. The answer is the owner's: it is not shown."""
    _, issued = _login(session, "inflight@example.com")
    stub, entered, release = _stalled(service.CancelResult(None, "Cancelled for you."))
    monkeypatch.setattr(service, "cancel_subscription", stub)
    monkeypatch.setattr(
        service, "dashboard", lambda **_: DashboardView(_view(), ["Yours only."], "v9")
    )
    root = _logged_in_tab_with_data(issued)
    await _connect(root, "the-owners-socket", _cookie(issued))
    dash = _substate(root, DashboardState)
    acting = asyncio.create_task(_run(DashboardState.confirm_cancel, dash, CANCEL_AT_PERIOD_END))
    await _until(entered.is_set, "the cancel to reach Stripe")
    del app.event_namespace.sid_to_token["the-owners-socket"]
    await _connect(root, "someone-elses-socket")  # the tab is emptied for them
    release.set()
    await asyncio.wait_for(acting, 5)
    assert dash.result_message == "" and dash.messages == [] and not dash.has_subscription


async def test_a_card_answer_ending_after_someone_else_took_the_tab_up_is_not_sent(
    db_engine, session, monkeypatch
):
    """Its answer may carry the payment's client secret (for the bank's check)."""
    _, issued = _login(session, "inflight-card@example.com")
    stub, entered, release = _stalled(
        service.SubscribeResult("requires_action", None, "pi_9_secret_owners")
    )
    monkeypatch.setattr(service, "start_subscription", stub)
    root = _logged_in_tab_with_data(issued)
    await _connect(root, "the-owners-socket", _cookie(issued))
    checkout = _substate(root, CheckoutState)
    pressed = asyncio.create_task(
        _run(CheckoutState.card_confirmed, checkout, {"payment_method_id": "pm_123"})
    )
    await _until(entered.is_set, "the subscribe to reach Stripe")
    del app.event_namespace.sid_to_token["the-owners-socket"]
    await _connect(root, "someone-elses-socket")
    release.set()
    updates = await asyncio.wait_for(pressed, 5)
    assert "pi_9_secret_owners" not in repr(updates) and checkout.processing is False


async def test_a_bank_check_answer_ending_after_someone_else_took_the_tab_up_is_not_sent(
    db_engine, session, monkeypatch
):
    """After 3-D Secure fails, the answer carries a new SetupIntent's secret for the card
    form, made on the owner's customer: not for whoever holds the tab's token by then."""
    _, issued = _login(session, "inflight-bank@example.com")

    def declined(**_):
        entered.set()
        assert release.wait(5), "never released"
        raise BillingError("Your card was declined.", kind="card")

    entered, release = threading.Event(), threading.Event()
    monkeypatch.setattr(service, "confirm_subscription", declined)
    monkeypatch.setattr(service, "create_setup_intent", lambda **_: "seti_9_secret_owners")
    root = _logged_in_tab_with_data(issued)
    await _connect(root, "the-owners-socket", _cookie(issued))
    checkout = _substate(root, CheckoutState)
    checkout._confirming = "pi_9"
    finished = asyncio.create_task(_run(CheckoutState.payment_confirmed, checkout, {}))
    await _until(entered.is_set, "the confirm to reach Stripe")
    del app.event_namespace.sid_to_token["the-owners-socket"]
    await _connect(root, "someone-elses-socket")
    release.set()
    updates = await asyncio.wait_for(finished, 5)
    assert "seti_9_secret_owners" not in repr(updates)
    assert checkout.setup_client_secret != "seti_9_secret_owners" and checkout.error == ""


async def test_a_late_event_of_a_closed_connection_is_dropped(db_engine, session):
    """A reload's old page, or a worker draining its queue, may deliver an event after the
    new connection checked the tab: it must not check it again by the old headers."""
    _, issued = _login(session, "late@example.com")
    root = _logged_in_tab_with_data(issued)
    auth = _substate(root, AuthState)
    await _connect(root, "the-old-socket", _cookie(issued))
    # A reload: the new page's connection is checked and its load proves the login there.
    await _connect(root, "the-new-socket", _cookie(issued))
    auth._remember(issued.session_id, issued.email)
    del app.event_namespace.sid_to_token["the-old-socket"]  # the old page is gone
    # Its last event arrives now (its handshake carried no cookie: the login came later).
    _arrive(root, "the-old-socket")
    late = await app._preprocess(root, _event(DashboardState, "confirm_cancel"))
    assert late is not None and late.delta == {} and late.events == []  # not run
    assert auth.user_email == "late@example.com"  # the tab kept
    assert _substate(root, DashboardState).messages == ["Your payment of $12.00 went through."]
    # ... and back on the live connection: the page's background work still finds its login.
    assert root.router.session.session_id == "the-new-socket"
    assert await auth._still_logged_in_as(issued.session_id)


@pytest.mark.parametrize("event", ["login", "register"])
async def test_sign_ins_wait_on_threads_of_their_own(db_engine, monkeypatch, event):
    """A flood of logins queued for a password check must not take the default pool, on
    which every page's database reads run; and "busy" reaches the form."""
    ran_on: list[str] = []

    def busy(**_):
        ran_on.append(threading.current_thread().name)
        raise accounts.HashingBusy()

    monkeypatch.setattr(accounts, event, busy)
    root = State(_reflex_internal_init=True)
    auth = _substate(root, AuthState)
    form = {"email": "someone@example.com", "password": "s3cret-pass"}
    await _run(getattr(AuthState, event), auth, form)
    assert ran_on and ran_on[0].startswith("sign-in")
    assert auth.form_error == accounts.BUSY_MESSAGE and auth.submitting is False


async def test_a_sign_in_past_its_threads_is_told_busy_at_once(db_engine, monkeypatch):
    """Every sign-in thread is taken (a flood): the next is not queued where no time limit
    applies, but told at once, and asks nothing."""
    asked: list[str] = []
    monkeypatch.setattr(accounts, "login", lambda **_: asked.append("login"))
    taken = 0
    while auth_state._sign_ins.acquire(blocking=False):
        taken += 1
    try:
        assert taken == auth_state.SIGN_IN_THREAD_COUNT
        root = State(_reflex_internal_init=True)
        auth = _substate(root, AuthState)
        await _run(AuthState.login, auth, {"email": "x@example.com", "password": "s3cret-pass"})
    finally:
        for _ in range(taken):
            auth_state._sign_ins.release()
    assert asked == []
    assert auth.form_error == accounts.BUSY_MESSAGE and auth.submitting is False


async def test_a_cancelled_sign_in_holds_its_place_until_its_thread_is_done(db_engine, monkeypatch):
    """The page's handler may be cancelled while its thread goes on checking a password:
    the place is the thread's, given back when it ends, so the bound stays true."""
    entered, go = threading.Event(), threading.Event()

    def slow_login(**_):
        entered.set()
        go.wait(timeout=30)
        raise accounts.InvalidCredentials(accounts.INVALID_CREDENTIALS_MESSAGE)

    monkeypatch.setattr(accounts, "login", slow_login)
    free = auth_state._sign_ins._value
    root = State(_reflex_internal_init=True)
    auth = _substate(root, AuthState)
    form = {"email": "x@example.com", "password": "s3cret-pass"}
    task = asyncio.ensure_future(_run(AuthState.login, auth, form))
    assert await asyncio.to_thread(entered.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert auth_state._sign_ins._value == free - 1  # still the running thread's
    go.set()
    deadline = time.monotonic() + 30
    while auth_state._sign_ins._value != free and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # until the thread's end gives it back
    assert auth_state._sign_ins._value == free


async def test_a_login_page_left_open_past_the_tabs_lifetime_still_logs_in(db_engine, session):
    """The store forgot the tab (Redis expires it after an hour): a login or registration
    form carries all it needs and runs on the fresh tab; another event has the page reload."""
    root = State(_reflex_internal_init=True)
    _substate(root, AuthState)._was_logged_in = True  # something to reset
    assert await _connect(root, "a-socket", first=_event(AuthState, "login")) is None
    other = await _connect(root, "another-socket", first=_event(DashboardState, "load"))
    assert other is not None and [e.name for e in other.events] == ["_call_script"]


def _hydrate(name: str = "hydrate_and_load") -> Event:
    """The event a page sends as its websocket connects (Reflex's own names)."""
    return _event(State, name)


def _event(state: type, name: str) -> Event:
    return Event(name=format_event_handler(state.event_handlers[name]))


def _cookie(issued) -> str:
    return f"{session_cookie.cookie_name()}={issued.token}"


def _logged_in_tab_with_data(issued) -> State:
    """A tab logged in on the owner's connection, its dashboard filled with their data."""
    root = State(_reflex_internal_init=True)
    _arrive(root, "the-owners-socket")
    _substate(root, AuthState)._remember(issued.session_id, issued.email)
    dash = _substate(root, DashboardState)
    dash.has_subscription, dash.subscription = True, _view()
    dash.messages = ["Your payment of $12.00 went through."]
    return root


def _nothing_of(root: State, email: str) -> bool:
    """The tab holds nothing of the person: what hydrate would send, and what it keeps."""
    dash = _substate(root, DashboardState)
    return (
        email not in json.dumps(root.dict(), default=str)
        and not dash.has_subscription
        and dash.messages == []
    )


@pytest.mark.parametrize("name", ["hydrate", "hydrate_and_load"])
async def test_a_connection_without_the_tabs_login_hydrates_a_fresh_tab(db_engine, session, name):
    """Hydrate sends the whole state; a closed tab's token alone must not fetch its person's."""
    _, issued = _login(session, "h@example.com")
    root = _logged_in_tab_with_data(issued)

    # Someone who read the closed tab's token connects with it, and no cookie.
    assert await _connect(root, "someone-elses-socket", first=_hydrate(name)) is None
    auth = _substate(root, AuthState)
    assert auth.user_email == "" and auth._auth_session_id == "" and not auth._was_logged_in
    assert _nothing_of(root, "h@example.com")


async def test_logging_in_on_a_borrowed_token_first_does_not_unlock_the_tab(db_engine, session):
    """A client of one's own need not hydrate first: it logs in as itself, then hydrates."""
    _, owner = _login(session, "victim@example.com")
    _, thief = _login(session, "thief@example.com")
    root = _logged_in_tab_with_data(owner)

    # The connection's first event, whatever it is: the tab is emptied and the page told to
    # load afresh (not this event).
    check = _event(AuthState, "check_session")
    answer = await _connect(root, "the-thiefs-socket", _cookie(thief), check)
    assert answer is not None and answer.events[0].name == "_call_script"
    assert _nothing_of(root, "victim@example.com")
    await _run(AuthState.check_session, _substate(root, AuthState))
    assert _substate(root, AuthState).user_email == "thief@example.com"
    await app._preprocess(root, _hydrate())
    assert _nothing_of(root, "victim@example.com")


async def test_a_tab_whose_login_state_expired_before_the_rest_starts_afresh(db_engine, session):
    """A store like Redis expires each state of a tab on its own: the dashboard's data can
    outlive the login state that says whose it is. Then no one can prove it theirs."""
    _, issued = _login(session, "x@example.com")
    root = _logged_in_tab_with_data(issued)
    # Its key expired; the dashboard's (a substate's, stored apart) did not.
    auth = _substate(root, AuthState)
    auth._auth_session_id = auth._auth_connection = auth.user_email = ""
    auth._was_logged_in = False
    await _connect(root, "the-owners-new-socket", _cookie(issued))
    assert _nothing_of(root, "x@example.com")


async def test_the_owners_reload_and_reconnects_hydrate_their_tab_as_it_was(db_engine, session):
    _, issued = _login(session, "o@example.com")
    root = _logged_in_tab_with_data(issued)
    # The same connection hydrating again ...
    await _connect(root, "the-owners-socket")
    # ... and a new connection whose handshake carries the login's own cookie (a reload, a
    # socket.io reconnect), with its first event and the next.
    await _connect(root, "the-owners-new-socket", _cookie(issued))
    assert await app._preprocess(root, _event(DashboardState, "load")) is None
    assert _substate(root, AuthState).user_email == "o@example.com"
    assert _substate(root, DashboardState).messages == ["Your payment of $12.00 went through."]

    # Another login's cookie (someone else logged in on this computer since) is not this one.
    _, other = _login(session, "other@example.com")
    await _connect(root, "a-third-socket", _cookie(other))
    assert _nothing_of(root, "o@example.com")


async def test_a_logged_out_logins_cookie_does_not_reopen_its_tab(db_engine, session):
    """A cookie's signature and expiry are checked without the database; a new connection's
    login is also looked up there, so a login logged out elsewhere (another device, the API)
    no longer opens the tab it filled, though its cookie is still well signed."""
    _, issued = _login(session, "revoked@example.com")
    root = _logged_in_tab_with_data(issued)
    assert accounts.revoke_session(session=session, session_id=issued.session_id)
    session.commit()
    await _connect(root, "the-owners-new-socket", _cookie(issued))
    assert _nothing_of(root, "revoked@example.com")
    assert _substate(root, AuthState)._auth_session_id == ""


async def test_a_reconnect_is_not_lent_the_tab_when_its_login_cannot_be_checked(
    db_engine, session, monkeypatch
):
    """The database is down as a reconnect arrives: the tab is not lent on the cookie alone
    (the page's own login check runs again on its next load)."""
    _, issued = _login(session, "unchecked@example.com")
    root = _logged_in_tab_with_data(issued)

    def down(session_id: str):
        raise OperationalError("SELECT", {}, Exception("database is down"))

    monkeypatch.setattr(auth_state, "_user_of", down)
    answer = await _connect(
        root, "the-owners-new-socket", _cookie(issued), _event(DashboardState, "load")
    )
    assert answer is not None and answer.events[0].name == "_call_script"
    assert _nothing_of(root, "unchecked@example.com")


async def test_a_reconnect_frees_what_a_dead_worker_left_busy(db_engine, session, monkeypatch):
    """A deploy or a crash kills a worker mid-event: its busy marks must not outlive it."""
    user, issued = _login(session, "busy@example.com")
    monkeypatch.setattr(
        service, "dashboard", lambda *, session, user: DashboardView(_view(), ["Live."], "v2")
    )
    root = _logged_in_tab_with_data(issued)
    auth, dash = _substate(root, AuthState), _substate(root, DashboardState)
    checkout = _substate(root, CheckoutState)
    # What the dead worker's events had set (and would have cleared had they finished).
    auth.submitting, checkout._submitting = True, True
    dash._watching, dash._watcher, dash._working, dash.opening_portal = True, "dead", True, True
    pressed_at = dash.action_seq  # the page's Confirm is busy until this moves on

    await _connect(root, "the-owners-new-socket", _cookie(issued))
    assert not (auth.submitting or checkout._submitting)
    assert not (dash._watching or dash._working or dash.opening_portal)
    assert dash.action_seq != pressed_at
    # Further events of the same connection change nothing more.
    await app._preprocess(root, _hydrate())
    assert dash.action_seq == pressed_at + 1
    # The page's load starts live updates again (refused while `_watching` stayed set).
    dash._watch_requested = True
    watcher = asyncio.create_task(_run(DashboardState.watch, dash))
    try:
        await _until(lambda: user.id in changes._waiters, "the watcher to listen")
        changes.wake_here([user.id])
        await _until(lambda: dash.messages == ["Live."], "the change to reach the page")
    finally:
        watcher.cancel()


async def test_a_watcher_of_an_old_connection_gives_way_to_the_new_ones(
    db_engine, session, monkeypatch
):
    user, issued = _login(session, "old@example.com")
    reads: list[str] = []
    monkeypatch.setattr(
        service,
        "dashboard",
        lambda *, session, user: reads.append("read") or DashboardView(_view(), ["N."], "v2"),
    )
    root = _logged_in_tab_with_data(issued)
    root.router = _connection("the-owners-socket", _cookie(issued))
    dash = _substate(root, DashboardState)
    dash._watch_requested = True
    old = asyncio.create_task(_run(DashboardState.watch, dash))
    await _until(lambda: user.id in changes._waiters, "the old watcher to listen")

    # A reload on a worker that is still alive: the old watcher is still waiting. The new
    # page's load proves the login on its connection (as `require_login` does) and starts
    # a watcher of its own.
    await _connect(root, "the-owners-new-socket", _cookie(issued))
    _substate(root, AuthState)._remember(issued.session_id, issued.email)
    dash._watch_requested = True
    new = asyncio.create_task(_run(DashboardState.watch, dash))
    try:
        await _until(lambda: len(changes._waiters.get(user.id, ())) == 2, "both to listen")
        changes.wake_here([user.id])
        await asyncio.wait_for(old, 5)  # it stops, reading nothing, and leaves the new one be
        await _until(lambda: dash.messages == ["N."], "the new watcher to update the page")
        assert reads == ["read"] and dash._watching is True and not new.done()
    finally:
        new.cancel()


async def test_checkout_unexpected_error_leaves_subscribe_usable(signed_in, monkeypatch):
    def broken(**_):
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "start_subscription", broken)
    checkout = _substate(signed_in, CheckoutState)
    checkout.card_loaded, checkout.setup_client_secret = True, "seti_1_secret_x"
    with pytest.raises(RuntimeError):
        await _run(CheckoutState.card_confirmed, checkout, {"payment_method_id": "pm_123"})
    # The pressed attempt is over: the page's busy button is free again.
    assert checkout.processing is False and checkout.attempt == 1
    assert checkout._submitting is False and checkout.card_ready is True


async def test_checkout_keeps_busy_only_while_the_bank_checks(signed_in, monkeypatch):
    monkeypatch.setattr(
        service,
        "start_subscription",
        lambda **_: service.SubscribeResult("requires_action", None, "pi_123_secret_456"),
    )
    checkout = _substate(signed_in, CheckoutState)
    updates = await _run(CheckoutState.card_confirmed, checkout, {"payment_method_id": "pm_123"})
    assert checkout.processing is True  # 3-D Secure is open in the page
    assert checkout.attempt == 0  # the press is not over
    assert "confirmPayment" in str(updates)
    confirmed = []

    def confirm(**kwargs):
        confirmed.append(kwargs["payment_intent_id"])
        return service.SubscribeResult("active", _view())

    monkeypatch.setattr(service, "confirm_subscription", confirm)
    await _run(CheckoutState.payment_confirmed, checkout, {})
    assert checkout.processing is False and checkout.succeeded is True
    # Only the attempt this page's bank check was for is settled (not a newer tab's).
    assert confirmed == ["pi_123"]


async def test_a_refused_card_shows_stripes_words_and_frees_the_button(signed_in):
    checkout = _substate(signed_in, CheckoutState)
    await _run(CheckoutState.card_confirmed, checkout, {"error": "Your card number is incomplete."})
    assert checkout.error == "Your card number is incomplete." and checkout.processing is False
    assert checkout.attempt == 1  # the page's busy button is free again


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
    # The same form from another tab: the address is taken.
    other = _substate(State(_reflex_internal_init=True), AuthState)
    await _run(AuthState.register, other, {**form, "confirm_password": "s3cret-pass"})
    assert "already exists" in other.form_error


async def test_a_second_press_queued_behind_a_successful_one_does_nothing(db_engine, session):
    """Double click or Enter twice: the second submit runs after the first logged the tab
    in. No "already exists", no second login session."""
    from sqlmodel import func, select

    from subscription_app.models import AuthSession

    auth = _substate(State(_reflex_internal_init=True), AuthState)
    form = {"email": "twice@example.com", "password": "s3cret-pass"}
    await _run(AuthState.register, auth, {**form, "confirm_password": "s3cret-pass"})
    first = auth._auth_session_id
    await _run(AuthState.register, auth, {**form, "confirm_password": "s3cret-pass"})
    assert auth.form_error == "" and auth._auth_session_id == first
    await _run(AuthState.login, auth, form)
    assert auth.form_error == "" and auth._auth_session_id == first
    session.rollback()
    assert session.exec(select(func.count()).select_from(AuthSession)).one() == 1


# Subscribe and cancel without waiting (issue 12) -----------------------------------------


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (CheckoutState, "prefetch"),
        (CheckoutState, "prepare"),
        (CheckoutState, "card_confirmed"),
        (CheckoutState, "payment_confirmed"),
        (DashboardState, "confirm_cancel"),
        (DashboardState, "undo_cancel"),
        (DashboardState, "load_invoices"),
        (DashboardState, "open_portal"),
        (PlanState, "start_checkout"),
        (CheckoutReturnState, "complete"),
    ],
)
async def test_events_that_wait_on_stripe_hold_no_state_lock(state, event):
    # Background events: the tab's lock is taken only inside `async with self`, to read and
    # to write, so other events of the tab (and the dashboard's watcher) never wait on Stripe.
    assert state.event_handlers[event].is_background


async def test_a_cancel_sends_nothing_before_its_answer(signed_in, monkeypatch):
    monkeypatch.setattr(
        service,
        "cancel_subscription",
        lambda **_: service.CancelResult(_view(cancel_at_period_end=True), "Cancelled."),
    )
    dash = _substate(signed_in, DashboardState)
    updates = await _run(DashboardState.confirm_cancel, dash, CANCEL_AT_PERIOD_END)
    assert updates == []  # no intermediate update: the page shows its busy button itself
    assert dash.result_message == "Cancelled." and dash.action_seq == 1


async def test_cancel_does_what_the_dialog_showed(signed_in, monkeypatch):
    asked = []

    def cancel(*, session, user, at_period_end):
        asked.append(at_period_end)
        return service.CancelResult(None, "Cancelled.")

    monkeypatch.setattr(service, "cancel_subscription", cancel)
    dash = _substate(signed_in, DashboardState)
    dash.cancel_when = CANCEL_AT_PERIOD_END  # what the server last heard from the radio group
    await _run(DashboardState.confirm_cancel, dash, CANCEL_NOW)
    await _run(DashboardState.confirm_cancel, dash, "something else")  # the server's choice
    assert asked == [False, True]


class _SetupIntents:
    """Stands in for `service.create_setup_intent`: records `reuse`, makes numbered secrets."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []

    def __call__(self, *, session, user, client_address=None, reuse=None) -> str:
        self.asked.append(reuse)
        return reuse or f"seti_{len(self.asked)}_secret_x"


async def test_the_plan_page_prepares_the_setup_intent_the_checkout_page_uses(
    signed_in, monkeypatch
):
    made = _SetupIntents()
    monkeypatch.setattr(service, "create_setup_intent", made)
    plan = _substate(signed_in, PlanState)
    assert await _run(PlanState.load, plan) == [CheckoutState.prefetch]
    checkout = _substate(signed_in, CheckoutState)
    await _run(CheckoutState.prefetch, checkout)
    assert checkout.setup_client_secret == "seti_1_secret_x"
    await _run(CheckoutState.prefetch, checkout)  # another plan visit: nothing new
    await _run(CheckoutState.prepare, checkout)  # then the checkout page opens
    assert checkout.setup_client_secret == "seti_1_secret_x" and checkout.error == ""
    # Handed back (not counted again), not made anew at Stripe.
    assert made.asked == [None, "seti_1_secret_x"]


async def test_nothing_is_prepared_for_a_live_subscription(signed_in, monkeypatch):
    made = _SetupIntents()
    monkeypatch.setattr(service, "create_setup_intent", made)
    monkeypatch.setattr(service, "get_subscription", lambda **_: _view())
    checkout = _substate(signed_in, CheckoutState)
    await _run(CheckoutState.prefetch, checkout)
    assert made.asked == [] and checkout.setup_client_secret == ""
    await _run(CheckoutState.prepare, checkout)
    assert made.asked == [] and checkout.already_subscribed is True


async def test_a_setup_intent_is_used_again_only_for_the_login_it_was_made_for(
    signed_in, monkeypatch
):
    made = _SetupIntents()
    monkeypatch.setattr(service, "create_setup_intent", made)
    checkout = _substate(signed_in, CheckoutState)
    checkout.setup_client_secret, checkout._setup_owner = "seti_old_secret_x", "another-login"
    await _run(CheckoutState.prepare, checkout)
    assert checkout.setup_client_secret == "seti_1_secret_x" and made.asked == [None]


async def test_a_held_setup_intent_still_meets_the_card_testing_limit(
    signed_in, session, monkeypatch
):
    monkeypatch.setattr(service, "get_client", lambda: pytest.fail("Stripe was asked"))
    auth = _substate(signed_in, AuthState)
    checkout = _substate(signed_in, CheckoutState)
    checkout.card_loaded = True
    checkout.setup_client_secret, checkout._setup_owner = "seti_held_secret_x", auth._session_ref()
    await _run(CheckoutState.prepare, checkout)
    assert checkout.setup_client_secret == "seti_held_secret_x" and checkout.card_ready
    user = accounts.user_for_session(session=session, session_id=auth._auth_session_id)
    assert user is not None
    for _ in range(5):  # the shipped limit: 5 card attempts per person per hour
        ratelimit.before_card_attempt(account=f"user:{user.id}", client_address=None)
    await _run(CheckoutState.prepare, checkout)
    assert "Too many card attempts" in checkout.error and checkout.card_ready is False


async def test_a_second_press_of_one_attempt_starts_nothing(signed_in, monkeypatch):
    started = []

    def start(**kwargs):
        started.append(kwargs["payment_method_id"])
        return service.SubscribeResult("active", _view())

    monkeypatch.setattr(service, "start_subscription", start)
    checkout = _substate(signed_in, CheckoutState)
    # checkout.js answers a second press of the same attempt (a double click) so:
    await _run(CheckoutState.card_confirmed, checkout, {"ignored": True})
    assert checkout.error == "" and checkout.attempt == 0
    checkout._submitting = True  # another answer of this tab is being handled
    await _run(CheckoutState.card_confirmed, checkout, {"payment_method_id": "pm_123"})
    assert started == []
    checkout._submitting = False
    await _run(CheckoutState.card_confirmed, checkout, {"payment_method_id": "pm_123"})
    assert started == ["pm_123"] and checkout.succeeded and checkout._submitting is False


async def test_a_failed_first_payment_frees_the_form_with_a_new_setup_intent(
    signed_in, monkeypatch
):
    def declined(**_):
        raise BillingError("Your card was declined. Try another card.", kind="card")

    made = _SetupIntents()
    monkeypatch.setattr(service, "start_subscription", declined)
    monkeypatch.setattr(service, "create_setup_intent", made)
    checkout = _substate(signed_in, CheckoutState)
    checkout.card_loaded, checkout.setup_client_secret = True, "seti_used_secret_x"
    await _run(CheckoutState.card_confirmed, checkout, {"payment_method_id": "pm_123"})
    assert checkout.error == "Your card was declined. Try another card."
    assert checkout.setup_client_secret == "seti_1_secret_x" and checkout.card_ready
    assert checkout.attempt == 1 and checkout.processing is False


async def test_a_setup_intent_stripe_no_longer_takes_is_replaced(signed_in, monkeypatch):
    made = _SetupIntents()
    monkeypatch.setattr(service, "create_setup_intent", made)
    checkout = _substate(signed_in, CheckoutState)
    checkout.card_loaded, checkout.setup_client_secret = True, "seti_used_secret_x"
    # checkout.js: Stripe said the SetupIntent was in an unexpected state (confirmed already,
    # say in a tab whose answer never reached us).
    error = {"error": "Check the details.", "card_refused": False, "renew": True}
    await _run(CheckoutState.card_confirmed, checkout, error)
    # Not Stripe's "invalid request" turned into "check your card": nothing was wrong with it.
    assert checkout.error == "This card form had expired. Please enter your card again."
    assert made.asked == [None]
    assert checkout.setup_client_secret == "seti_1_secret_x" and checkout.attempt == 1


async def test_a_card_stripe_declined_is_tried_again_on_a_new_setup_intent(signed_in, monkeypatch):
    """Stripe's decline event cancels the declined SetupIntent (one declined card per form),
    so the form moves on to a new one at once, keeping Stripe's words."""
    made = _SetupIntents()
    failures: list[str | None] = []
    monkeypatch.setattr(service, "create_setup_intent", made)
    monkeypatch.setattr(
        service,
        "record_card_failure",
        lambda *, user, client_address: failures.append(client_address),
    )
    checkout = _substate(signed_in, CheckoutState)
    checkout.card_loaded, checkout.setup_client_secret = True, "seti_declined_secret_x"
    refused = {"error": "Your card was declined.", "card_refused": True, "renew": False}
    await _run(CheckoutState.card_confirmed, checkout, refused)
    assert len(failures) == 1 and made.asked == [None]
    assert checkout.error == "Your card was declined."
    assert checkout.setup_client_secret == "seti_1_secret_x" and checkout.card_ready

    # The last card attempt: no new form follows, and the person is told why.
    def limited(**_):
        raise RateLimited(3600, "card attempts")

    monkeypatch.setattr(service, "create_setup_intent", limited)
    await _run(CheckoutState.card_confirmed, checkout, refused)
    assert checkout.error == (
        "Your card was declined. Too many card attempts. Please wait 60 minutes and try again."
    )
    assert checkout.setup_client_secret == ""


async def test_the_invoice_list_keeps_what_it_had_when_stripe_fails(signed_in, monkeypatch):
    shown = InvoiceView(
        number="INV-1",
        created=None,
        amount_paid=1200,
        currency="usd",
        status="paid",
        hosted_invoice_url="https://invoice.example/1",
        invoice_pdf="https://invoice.example/1.pdf",
    )
    monkeypatch.setattr(
        service, "list_invoices", lambda **_: InvoiceHistory([shown], has_more=True)
    )
    dash = _substate(signed_in, DashboardState)
    await _run(DashboardState.load_invoices, dash)
    assert dash.invoices == [shown] and dash.invoices_loaded and dash.invoices_error == ""
    assert dash.invoices_more is True  # "Older invoices are in Manage billing."

    def unavailable(**_):
        raise BillingError(service.UNAVAILABLE, kind="unavailable")

    monkeypatch.setattr(service, "list_invoices", unavailable)
    await _run(DashboardState.load_invoices, dash)
    assert dash.invoices == [shown] and dash.invoices_error == service.UNAVAILABLE


async def _until(condition, what: str, timeout: float = 5.0) -> None:
    """Let the event loop run until `condition()` holds (a bound, not a pause)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.005)


async def test_the_watcher_leaves_the_tabs_own_cancel_to_answer_then_looks_again(
    signed_in, session, monkeypatch
):
    """A change committed by this tab's own cancel wakes its watcher mid-action.

    The watcher reads nothing while the action runs (the action answers with the page as it
    is after the change, and a second read would only delay that answer); once the action
    has answered, the watcher is woken again and refreshes the invoices.
    """
    auth = _substate(signed_in, AuthState)
    user = accounts.user_for_session(session=session, session_id=auth._auth_session_id)
    assert user is not None and user.id is not None
    dash = _substate(signed_in, DashboardState)
    signed_in.router = RouterData.from_router_data(
        {"pathname": routes.DASHBOARD, "asPath": routes.DASHBOARD, "query": {}}
    )
    dash._watch_requested, dash.invoices_loaded = True, True

    reads_while_acting: list[bool] = []

    def dashboard(*, session, user):
        reads_while_acting.append(dash._working)
        return DashboardView(None, [], f"version {len(reads_while_acting)}")

    invoice_reads: list[int] = []

    def cancel(*, session, user, at_period_end):
        changes.wake_here([user.id])  # as the commit of the change itself does
        deadline = time.monotonic() + 5
        while not dash._held_back:  # the watcher saw the wake-up, mid-action
            assert time.monotonic() < deadline, "the watcher never woke"
            time.sleep(0.005)
        return service.CancelResult(None, "Cancelled.")

    monkeypatch.setattr(service, "dashboard", dashboard)
    monkeypatch.setattr(
        service, "list_invoices", lambda **_: invoice_reads.append(1) or InvoiceHistory([])
    )
    monkeypatch.setattr(service, "cancel_subscription", cancel)

    watcher = asyncio.create_task(_run(DashboardState.watch, dash))
    try:
        await _until(lambda: user.id in changes._waiters, "the watcher to listen")
        await _run(DashboardState.confirm_cancel, dash, CANCEL_AT_PERIOD_END)
        assert reads_while_acting == [True]  # the action's own read only
        assert dash.result_message == "Cancelled." and dash._held_back is False
        await _until(lambda: invoice_reads == [1], "the watcher to look again")
        assert reads_while_acting == [True, False]
    finally:
        watcher.cancel()


@pytest.mark.parametrize("headers_left", ["no cookie", "the owner's old cookie"])
async def test_the_watcher_feeds_no_other_connection_than_the_login_it_reads_for(
    db_engine, session, monkeypatch, headers_left
):
    """The owner's tab closed with the dashboard open; its token is used elsewhere. Reflex
    may keep the old connection's request headers (the owner's cookie) for the new one until
    that one sends an event of its own: they prove nothing."""
    user, issued = _login(session, "w@example.com")
    reads: list[int] = []
    monkeypatch.setattr(
        service,
        "dashboard",
        lambda *, session, user: reads.append(1) or DashboardView(_view(), ["Yours."], "v2"),
    )
    cookie = f"{session_cookie.cookie_name()}={issued.token}"
    root = State(_reflex_internal_init=True)
    root.router = _connection("the-owners-socket", cookie)
    _substate(root, AuthState)._remember(issued.session_id, issued.email)
    dash = _substate(root, DashboardState)
    dash._watch_requested = True
    watcher = asyncio.create_task(_run(DashboardState.watch, dash))
    await _until(lambda: user.id in changes._waiters, "the watcher to listen")

    left = cookie if headers_left == "the owner's old cookie" else ""
    root.router = _connection("someone-elses-socket", left)
    changes.wake_here([user.id])  # a change of the owner's
    await asyncio.wait_for(watcher, 5)
    assert reads == [] and dash.messages == [] and dash._watching is False


async def test_the_watcher_goes_on_for_the_owners_own_reconnect(db_engine, session, monkeypatch):
    user, issued = _login(session, "r@example.com")
    monkeypatch.setattr(
        service, "dashboard", lambda *, session, user: DashboardView(_view(), ["New."], "v2")
    )
    cookie = f"{session_cookie.cookie_name()}={issued.token}"
    root = State(_reflex_internal_init=True)
    root.router = _connection("the-owners-socket", cookie)
    auth = _substate(root, AuthState)
    auth._remember(issued.session_id, issued.email)
    dash = _substate(root, DashboardState)
    dash._watch_requested = True
    watcher = asyncio.create_task(_run(DashboardState.watch, dash))
    try:
        await _until(lambda: user.id in changes._waiters, "the watcher to listen")
        # A network blip: the tab reconnects, and its page load proves the login again.
        root.router = _connection("the-owners-new-socket", cookie)
        auth._remember(issued.session_id, issued.email)
        changes.wake_here([user.id])
        await _until(lambda: dash.messages == ["New."], "the change to reach the page")
        assert dash._watching is True
    finally:
        watcher.cancel()


async def test_a_logged_out_checkout_return_is_sent_to_login_keeping_its_session_id(
    signed_in, session
):
    auth = _substate(signed_in, AuthState)
    assert accounts.revoke_session(session=session, session_id=auth._auth_session_id)
    session.commit()
    auth.router = RouterData.from_router_data(
        {"sid": "s1", "headers": {}, "asPath": "/checkout/complete?session_id=cs_test_1"}
    )
    updates = await _run(AuthState.require_login, auth)
    assert "/login?next=/checkout/complete%3Fsession_id%3Dcs_test_1" in str(updates)


async def test_manage_billing_goes_to_the_portal_and_shows_a_failure(signed_in, monkeypatch):
    dash = _substate(signed_in, DashboardState)
    monkeypatch.setattr(
        service, "open_billing_portal", lambda **_: "https://billing.stripe.test/p/session_1"
    )
    updates = await _run(DashboardState.open_portal, dash)
    assert "billing.stripe.test/p/session_1" in str(updates)
    assert dash.opening_portal is False  # free again on "Back" from the portal

    def unavailable(**_):
        raise BillingError("Payments are unavailable right now.", kind="unavailable")

    monkeypatch.setattr(service, "open_billing_portal", unavailable)
    await _run(DashboardState.open_portal, dash)
    assert dash.action_error == "Payments are unavailable right now."
    assert dash.opening_portal is False


async def test_a_second_manage_billing_press_while_the_first_runs_does_nothing(
    signed_in, monkeypatch
):
    dash = _substate(signed_in, DashboardState)
    dash.opening_portal = True  # the first press is under way
    calls = []
    monkeypatch.setattr(service, "open_billing_portal", lambda **kw: calls.append(kw))
    assert await _run(DashboardState.open_portal, dash) == [None]
    assert calls == [] and dash.opening_portal is True


async def test_the_checkout_return_page_shows_what_recording_said(signed_in, monkeypatch):
    page = _substate(signed_in, CheckoutReturnState)
    page.router = RouterData.from_router_data(
        {"sid": "s1", "headers": {}, "asPath": "/checkout/complete?session_id=cs_test_1"}
    )
    _substate(signed_in, AuthState)._auth_connection = "s1"  # logged in on this connection
    seen = []

    def recorded(**kw):
        seen.append(kw["checkout_session_id"])
        return service.SubscribeResult("active", _view())

    monkeypatch.setattr(service, "complete_checkout", recorded)
    await _run(CheckoutReturnState.complete, page)
    assert page.error == "" and seen == ["cs_test_1"] and page.result == "active"

    def twice(**_):
        raise service.AlreadySubscribed()

    monkeypatch.setattr(service, "complete_checkout", twice)
    await _run(CheckoutReturnState.complete, page)
    assert page.already_subscribed is True and page.result == ""


# Not named `page`: that is pytest-playwright's fixture, and a test asking for it is
# ordered among the browser tests (whose event loop then breaks the async tests after them).
@pytest.mark.parametrize("where", ["portal", "checkout"])
async def test_no_stripe_page_opens_for_a_tab_that_logged_out_while_stripe_answered(
    signed_in, monkeypatch, where
):
    """Log out no longer waits for the Stripe call of Manage billing or Checkout (both are
    background events): the browser must not then be sent to that person's Stripe page."""
    auth = _substate(signed_in, AuthState)

    def answered_after_logout(url: str):
        def call(**_):
            auth._forget()  # the Log out event ran meanwhile
            return url

        return call

    if where == "portal":
        monkeypatch.setattr(
            service, "open_billing_portal", answered_after_logout("https://billing.stripe.test/p")
        )
        dash = _substate(signed_in, DashboardState)
        assert await _run(DashboardState.open_portal, dash) == [None]
        assert dash.opening_portal is False
    else:
        monkeypatch.setattr(
            service, "start_checkout", answered_after_logout("https://checkout.stripe.test/c")
        )
        plan = _substate(signed_in, PlanState)
        assert await _run(PlanState.start_checkout, plan) == [None]
        assert plan.redirecting is False


async def test_a_checkout_press_after_the_login_ended_comes_back_to_the_plan_itself(
    signed_in, session
):
    auth = _substate(signed_in, AuthState)
    assert accounts.revoke_session(session=session, session_id=auth._auth_session_id)
    session.commit()
    plan = _substate(signed_in, PlanState)
    plan.router = RouterData.from_router_data(
        {"sid": "", "headers": {}, "asPath": "/plan?checkout=cancelled"}
    )
    updates = str(await _run(PlanState.start_checkout, plan))
    assert "/login?next=/plan" in updates and "cancelled" not in updates
    assert plan.redirecting is False
