"""Login state: the session cookie, the current user, and the login/register/logout events."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import reflex as rx
from reflex.middleware.middleware import Middleware
from reflex.state import BaseState, StateUpdate
from reflex_base.constants import CompileVars
from reflex_base.event import Event
from reflex_base.utils.format import format_event_handler
from sqlmodel import Session

from subscription_app import accounts, routes, session_cookie
from subscription_app.db import session_scope
from subscription_app.errors import AppError
from subscription_app.models import User

T = TypeVar("T")
logger = logging.getLogger(__name__)

# Logins and registrations run on threads of their own: each may wait for a password check
# (`accounts.password_check_slot`), and a flood of them must not take the default pool every
# page's database reads run on. One more than the threads is told "busy" at once, rather
# than queue where no time limit applies.
SIGN_IN_THREAD_COUNT = 8
SIGN_IN_THREADS = ThreadPoolExecutor(max_workers=SIGN_IN_THREAD_COUNT, thread_name_prefix="sign-in")
_sign_ins = threading.BoundedSemaphore(SIGN_IN_THREAD_COUNT)


def _fetch_js(method: str, path: str, body: dict | None = None) -> str:
    """Script for the page: call our API with its cookies; resolves to true when it worked."""
    options: dict[str, object] = {"method": method, "credentials": "same-origin"}
    if body is not None:
        options["headers"] = {"Content-Type": "application/json"}
        options["body"] = json.dumps(body)
    return f"fetch({json.dumps(path)}, {json.dumps(options)}).then(r => r.ok).catch(() => false)"


class SessionEnded(Exception):
    """The login behind this tab was logged out (any tab, the API), expired, or never was."""


def _user_of(session_id: str) -> tuple[str, str] | None:
    with session_scope() as session:
        user = accounts.user_for_session(session=session, session_id=session_id)
        return (session_id, user.email) if user else None


def call_as_user(session_id: str, fn: Callable[[Session, User], T]) -> T:
    """Run `fn` for the session's user, in one transaction that first re-checks the session."""
    with session_scope() as session:
        user = accounts.user_for_session(session=session, session_id=session_id)
        if user is None:
            raise SessionEnded()
        return fn(session, user)


class AuthState(rx.State):
    """Who is logged in. Pages that need a user put `require_login` in their on_load."""

    user_email: str = ""
    # Backend-only (never sent to the browser): which login session this tab belongs to, as
    # its stored (hashed) id, which is no credential. After a reload it comes from the
    # HttpOnly cookie the browser sends with the websocket handshake. Every event that reads
    # or changes account or billing data re-checks that session in the database first.
    _auth_session_id: str = ""
    # Backend-only: the websocket connection that login was made or last checked on. The
    # tab's Reflex token is no credential (page scripts can read it, and it travels in the
    # websocket's URL): another connection presenting it gets the login only from its own
    # cookie, not from this state.
    _auth_connection: str = ""
    # Backend-only: this tab has been logged in at some point, so its states may hold that
    # person's data (subscription, messages, invoices). Leaving the login starts it afresh.
    _was_logged_in: bool = False
    # Backend-only: the websocket connection `TabGuard` last checked, and what Reflex said of
    # it (its router data: the tab goes back to it after a late event of another is dropped).
    _checked_connection: str = ""
    _checked_router: dict = {}
    auth_checked: bool = False
    form_error: str = ""
    submitting: bool = False

    @rx.var
    def logged_in(self) -> bool:
        """True when a valid session was found."""
        return self.user_email != ""

    def _session_ref(self) -> str:
        connection = self.router.session.session_id
        if self._auth_session_id and self._auth_connection == connection:
            return self._auth_session_id
        if self._checked_connection != connection:
            # A connection that has sent no event yet: Reflex may still hold the previous
            # connection's request headers for it (the owner's cookie), which prove nothing.
            return ""
        # A new connection (a reload, a reconnect, or someone else holding this tab's token):
        # whatever login its own handshake's cookie proves.
        token = session_cookie.token_from_cookie_header(self.router.headers.cookie)
        return accounts.session_id_for_token(token) or "" if token else ""

    def _remember(self, session_id: str, email: str) -> None:
        """This tab is logged in as `email` by `session_id`, on this connection."""
        self._auth_session_id, self.user_email = session_id, email
        self._auth_connection = self.router.session.session_id
        self.auth_checked = self._was_logged_in = True

    def _reconnected(self) -> None:
        """The owner's page connected again (`TabGuard`): a login or registration of the
        page before is no longer waited on, and may have died with its worker."""
        self.submitting = False

    def _forget(self) -> None:
        self._auth_session_id, self.user_email, self._auth_connection = "", "", ""
        self.auth_checked = True

    async def _refresh_user(self) -> None:
        ref = self._session_ref()
        found = await asyncio.to_thread(_user_of, ref) if ref else None
        if found is None:
            self._forget()
        else:
            self._remember(*found)

    async def _run_as_user(self, fn: Callable[[Session, User], T]) -> T:
        """Run a blocking service call for this tab's user, after re-checking the session.

        Raises:
            SessionEnded: logged out, expired or unknown; this tab then forgets the login.
        """
        auth = await self.get_state(AuthState)  # this tab's login, also from a substate
        try:
            return await asyncio.to_thread(call_as_user, auth._session_ref(), fn)
        except SessionEnded:
            auth._forget()
            raise

    async def _as_user(self, ref: str, fn: Callable[[Session, User], T]) -> T:
        """From a background event: run a blocking service call for the login `ref` (read
        under the state lock, `_session_ref`), holding no state lock meanwhile.

        The session is re-checked in the database first (`call_as_user`).

        Raises:
            SessionEnded: logged out or expired; this tab then forgets the login.
        """
        try:
            return await asyncio.to_thread(call_as_user, ref, fn)
        except SessionEnded:
            async with self:
                (await self.get_state(AuthState))._forget()
            raise

    async def _still_logged_in_as(self, ref: str) -> bool:
        """Whether this tab is still logged in by the login `ref` (call inside `async with
        self`). A background event that waited on Stripe checks it before sending the
        browser to a page of that person's: Log out may have run meanwhile."""
        auth = await self.get_state(AuthState)
        return bool(ref) and auth.logged_in and auth._session_ref() == ref

    def _leave(self, url: str):
        """Go to `url`; a tab that was logged in is started afresh on the way.

        The browser forgets the tab's Reflex token and loads `url` anew, so the tab gets a
        new, empty state: nothing of the person who was logged in here (their subscription,
        messages, invoices) stays in it for whoever logs in next on this computer.
        """
        if not self._was_logged_in:
            return rx.redirect(url)
        # One script: Reflex's own `rx.clear_session_storage()` would also hydrate the page
        # again on the old token, whose ended login sends it off once more, and so on; and
        # `rx.redirect(..., is_external=True)` would open a new tab.
        return rx.call_script(f"sessionStorage.clear(); window.location.assign({json.dumps(url)})")

    def _to_login(self):
        """Where a tab goes once its session has ended: the login page, then back here.

        Back to the same address, query included: the Checkout return page's session id is
        in it, and without it a person who paid would be told the checkout is not theirs.
        """
        return self._leave(routes.login_then(self.router.url.path, self.router.url.query))

    @rx.event
    async def check_session(self):
        """Load the user behind the session cookie (any page's on_load)."""
        await self._refresh_user()

    @rx.event
    async def require_login(self):
        """On_load guard: send a logged-out visitor to the login page, then back here."""
        await self._refresh_user()
        if not self.logged_in:
            return self._to_login()
        return None

    @rx.event
    async def redirect_if_logged_in(self):
        """On_load of login/register: a logged-in user has nothing to do there."""
        self.form_error = ""
        await self._refresh_user()
        if self.logged_in:
            return rx.redirect(self._next_target())
        return None

    def _next_target(self) -> str:
        return routes.safe_next(self.router.url.query_parameters.get("next"))

    def _apply_login(self, issued: accounts.IssuedToken):
        """Remember the login here and have the page store the HttpOnly cookie."""
        self._remember(issued.session_id, issued.email)
        handoff = session_cookie.make_handoff(issued.token)
        return rx.call_script(
            _fetch_js("POST", routes.API_BROWSER_SESSION, {"handoff": handoff}),
            callback=AuthState.session_stored,
        )

    @rx.event
    def session_stored(self, ok: bool):
        """The cookie is set (or could not be: the login still works in this tab)."""
        return rx.redirect(self._next_target())

    def _client_address(self) -> str | None:
        """The client's address, as the rate limits count it (behind TRUSTED_PROXIES)."""
        return self.router.session.client_ip or None

    async def _sign_in(self, sign_in: Callable[[Session, str | None], accounts.IssuedToken]):
        """Run a login or a registration (`sign_in`), then log this tab in (event updates).

        `sign_in` gets a database session and the client address; an `AppError` it raises
        is shown on the form.
        """
        # A second press queued behind the first (a double click, Enter twice) finds the tab
        # logged in by then: nothing to do (it would log in again, or say the new account
        # "already exists" just before the page moves on).
        if self.submitting or self.logged_in:
            return
        self.submitting, self.form_error = True, ""
        yield
        address = self._client_address()

        def _do() -> accounts.IssuedToken:
            with session_scope() as session:
                return sign_in(session, address)

        if not _sign_ins.acquire(blocking=False):
            self.submitting, self.form_error = False, accounts.BUSY_MESSAGE
            return
        try:
            running = SIGN_IN_THREADS.submit(_do)
        except BaseException:
            _sign_ins.release()
            raise
        # Given back when the thread is done, not when this handler is (it may be cancelled
        # while the thread goes on).
        running.add_done_callback(lambda _: _sign_ins.release())
        try:
            issued = await asyncio.wrap_future(running)
        except AppError as exc:
            self.form_error = exc.message
            return
        finally:
            self.submitting = False
        yield self._apply_login(issued)

    @rx.event
    async def login(self, form_data: dict):
        """Log in with the submitted email and password."""
        email = str(form_data.get("email", ""))
        password = str(form_data.get("password", ""))
        async for update in self._sign_in(
            lambda session, address: accounts.login(
                session=session, email=email, password=password, client_address=address
            )
        ):
            yield update

    @rx.event
    async def register(self, form_data: dict):
        """Create an account from the submitted form, then log in."""
        email = str(form_data.get("email", ""))
        password = str(form_data.get("password", ""))
        if password != str(form_data.get("confirm_password", password)):
            self.form_error = "The two passwords do not match."
            return

        def _register(session: Session, address: str | None) -> accounts.IssuedToken:
            user = accounts.register(
                session=session, email=email, password=password, client_address=address
            )
            return accounts.issue_token(session=session, user=user)

        async for update in self._sign_in(_register):
            yield update

    @rx.event
    async def logout(self):
        """End the session on the server and in the browser (the cookie is deleted)."""
        ref = self._session_ref()

        def _do() -> None:
            with session_scope() as session:
                accounts.revoke_session(session=session, session_id=ref)

        if ref:
            await asyncio.to_thread(_do)
        self._forget()
        return rx.call_script(
            _fetch_js("DELETE", routes.API_BROWSER_SESSION), callback=AuthState.logged_out
        )

    @rx.event
    def logged_out(self, ok: bool):
        """After the cookie is gone: back to the landing page, in a fresh tab state."""
        return self._leave(routes.LANDING)


@functools.cache
def _hydrate_events() -> frozenset[str]:
    """The names of the events that send the browser a tab's whole state (Reflex's own)."""
    return frozenset(
        format_event_handler(rx.State.event_handlers[name])
        for name in (CompileVars.HYDRATE, CompileVars.HYDRATE_AND_LOAD)
    )


def _states_in(root: BaseState) -> Iterator[BaseState]:
    """`root` and every substate of it loaded with it."""
    yield root
    for substate in root.substates.values():
        yield from _states_in(substate)


async def _load_every_state(root: BaseState) -> None:
    """Have every state of the tab in `root`'s tree (already there in memory and on hydrate)."""
    pending = list(type(root).get_substates())
    while pending:
        cls = pending.pop()
        await root.get_state(cls)
        pending.extend(cls.get_substates())


class TabGuard(Middleware):
    """A tab's state goes only to a connection that proves the login that filled it, and a
    new connection frees the tab of what a dead worker left marked busy.

    Reflex answers a connection's first event (hydrate, sent as its websocket connects) with
    the tab's whole state: once logged in, the person's email, subscription, messages,
    invoices and card form. The tab's Reflex token is what names that state, and it is no
    credential (page scripts can read it; it travels in the websocket's address, so proxies
    log it). So on every hydrate, and on the first event of each new connection (a custom
    client need not hydrate first, and Reflex re-hydrates inline a tab whose root state it
    lost), the connection must prove the tab's login (`AuthState._session_ref`): the same
    connection, or its own handshake's cookie (a reload, a reconnect). Otherwise (a closed
    tab's token presented by someone else, a reload after the login ended, a tab whose
    login state expired before the rest of it) the whole state is reset: a hydrate then
    sends the fresh, logged-out tab; any other event is not run (but a login or
    registration form, which carries all it needs), and the page is told to load afresh.
    A borrowed token's connection can therefore log in as itself only on a tab already
    emptied. Until a connection's first event, its login is not taken from the request
    headers Reflex may still hold from the previous one (`_session_ref`). A late event of a
    connection that has closed is dropped, not judged.

    A new connection that does prove it is a reload or a reconnect of the owner's page:
    each state's `_reconnected` (where a state defines one) clears what its events mark
    busy, as a worker that died (a deploy, a crash) mid-event would otherwise leave it set
    for good.

    Registered on the app (`build_app`): Reflex runs app middleware on every event before
    its handler, so this runs before `hydrate` and `hydrate_and_load` take their snapshot.
    """

    async def preprocess(self, app, state: BaseState, event: Event) -> StateUpdate | None:
        """Reset the tab, or free it, when a new connection hydrates it or first acts on it."""
        auth = await state.get_state(AuthState)
        connection = state.router.session.session_id
        hydrate = event.name in _hydrate_events()
        if not hydrate and auth._checked_connection == connection:
            return None
        if not _still_connected(app, connection, state.router.session.client_token):
            # A late event of a connection that has closed (a reload's old page, a worker
            # draining its queue): no page waits for its answer, and judging the tab by
            # that connection's headers would undo the new one's check. Reflex has already
            # set the tab's router to that connection: back to the live one's, or the live
            # page's background work would find its login unproven (`_session_ref`).
            if auth._checked_router:
                state.router_data = state._update_router_vars(
                    dict(auth._checked_router), state.router_data
                )
            return StateUpdate()
        new = auth._checked_connection != connection
        _checked(auth, state)  # its headers are now this connection's own
        if auth._auth_session_id and auth._session_ref() == auth._auth_session_id:
            if new and not await _still_active(auth._auth_session_id):
                # The cookie is well signed and unexpired, but its login was logged out
                # (elsewhere, through the API) or ended: it proves nothing any more.
                return await _start_afresh(state, auth, event, hydrate)
            if new:
                for each in _states_in(state):
                    reconnected = type(each).__dict__.get("_reconnected")
                    if reconnected is not None:
                        reconnected(each)
            return None
        return await _start_afresh(state, auth, event, hydrate)


_RELOAD = "window.location.reload()"


async def _start_afresh(
    state: BaseState, auth: AuthState, event: Event, hydrate: bool
) -> StateUpdate | None:
    """Empty the whole tab (`state` is its root); what `TabGuard` answers for `event`."""
    await _load_every_state(state)  # a store like Redis loads only what an event needs
    state.reset()  # the whole tree, backend-only vars included
    _checked(auth, state)
    if hydrate or event.name in _fresh_tab_events():
        return None  # Reflex's hydrate then sends the fresh tab; or the form is sent
    # The page shows a tab that is gone (its login state expired, say): not this event,
    # but a fresh load of the page, which checks the login anew.
    return StateUpdate(events=Event.from_event_type(rx.call_script(_RELOAD)))


async def _still_active(session_id: str) -> bool:
    """Whether the login `session_id` is still active in the database (a new connection's
    cookie is checked for its signature and expiry only, `_session_ref`). If the database
    cannot say, the tab is not lent: the page's own login check runs again on reload."""
    try:
        return await asyncio.to_thread(_user_of, session_id) is not None
    except Exception:
        logger.warning("could not check a reconnecting tab's login", exc_info=True)
        return False


def _checked(auth: AuthState, root: BaseState) -> None:
    """Note the connection of the event under way as the tab's checked one."""
    auth._checked_connection = root.router.session.session_id
    auth._checked_router = dict(root.router_data)


@functools.cache
def _fresh_tab_events() -> frozenset[str]:
    """Events that carry all they need and may run on a tab just reset: logging in or
    registering from a login page left open longer than the tab's stored state lives."""
    return frozenset(
        format_event_handler(AuthState.event_handlers[name]) for name in ("login", "register")
    )


def _still_connected(app, connection: str, token: str) -> bool:
    """Whether `connection` is the socket this worker holds for the tab `token` now."""
    namespace = getattr(app, "event_namespace", None)
    if namespace is None:  # no websocket server (tests calling the middleware directly)
        return True
    return namespace.sid_to_token.get(connection) == token


def require_login(
    page=None,
    *,
    ahead: Callable[[], rx.Component] | None = None,
    shown_while_checking: bool = False,
):
    """Decorator for page functions: show the page only to a logged-in user.

    Add `AuthState.require_login` to the page's `on_load` as well (the registry in
    `subscription_app.py` does that for pages carrying `_requires_login`). `ahead`, used as
    `@require_login(ahead=...)`, is rendered at once, while the login is being checked:
    things the page fetches ahead (it must show nothing of the page itself).

    `shown_while_checking=True` renders the page itself at once too (it is then in the
    server's HTML) and hides it only once the check finds no login, as the visitor is sent
    to log in. Only for a page that shows nothing of the user's until its own on_load
    fills it in: the checkout page (the public plan and an empty card field).
    """
    if page is None:
        return lambda page: require_login(
            page, ahead=ahead, shown_while_checking=shown_while_checking
        )

    def _guarded():
        shown: rx.Var[bool] = AuthState.logged_in
        if shown_while_checking:
            shown = shown | ~AuthState.auth_checked
        guarded = rx.cond(
            shown,
            page(),
            # A live region with words: a bare spinner has no name screen readers announce.
            rx.center(
                rx.spinner(size="3", aria_hidden="true"),
                rx.text("Checking your login…", size="2", color_scheme="gray"),
                role="status",
                aria_live="polite",
                direction="column",
                gap="2",
                padding="3rem 0",
            ),
        )
        return rx.fragment(ahead(), guarded) if ahead is not None else guarded

    _guarded.__name__ = page.__name__
    _guarded.__doc__ = page.__doc__
    # A marker the page registry reads; functions take attributes, mypy does not know this one.
    _guarded._requires_login = True  # type: ignore[attr-defined]
    return _guarded
