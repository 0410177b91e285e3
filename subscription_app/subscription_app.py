"""The app: builds `rx.App`, mounts the REST API and registers every page."""

from __future__ import annotations

import reflex as rx

from subscription_app import changes, notifications, reflex_fixes, routes
from subscription_app.api import create_api
from subscription_app.api.webhooks import dispatch_webhooks_first
from subscription_app.billing import processor_process
from subscription_app.pages import auth, checkout, checkout_complete, dashboard, landing, plan
from subscription_app.security import SecurityMiddleware
from subscription_app.state.auth import AuthState, TabGuard
from subscription_app.state.billing import (
    CheckoutReturnState,
    CheckoutState,
    DashboardState,
    PlanState,
)

# (route, page function, title). Pages decorated with `require_login` get the guard.
PAGES = [
    (routes.LANDING, landing.landing, "Subscription App"),
    (routes.REGISTER, auth.register, "Create your account"),
    (routes.LOGIN, auth.login, "Log in"),
    (routes.PLAN, plan.plan, "Our plan"),
    (routes.CHECKOUT, checkout.checkout, "Checkout"),
    (routes.CHECKOUT_COMPLETE, checkout_complete.checkout_complete, "Checkout"),
    (routes.DASHBOARD, dashboard.dashboard, "Dashboard"),
]

# Extra on_load events, run after the login guard.
_LOADERS = {
    routes.CHECKOUT: [CheckoutState.prepare],
    routes.CHECKOUT_COMPLETE: [CheckoutReturnState.complete],
    routes.DASHBOARD: [DashboardState.load],
}
# Pages open to everyone whose own loader also checks the session.
_PUBLIC_LOADERS = {routes.PLAN: [PlanState.load]}

# Login and registration bounce an already logged-in visitor onwards.
_GUEST_ONLY = {routes.REGISTER, routes.LOGIN}


def _on_load(route: str, page) -> list:
    if getattr(page, "_requires_login", False):
        return [AuthState.require_login, *_LOADERS.get(route, [])]
    if route in _GUEST_ONLY:
        return [AuthState.redirect_if_logged_in]
    return _PUBLIC_LOADERS.get(route, [AuthState.check_session])


class _App(rx.App):
    """`rx.App` whose served ASGI app takes webhook deliveries before anything else."""

    def __call__(self):
        """The ASGI app granian serves, with the webhook fast path in front."""
        return dispatch_webhooks_first(super().__call__())


def build_app() -> rx.App:
    """Create the Reflex app with the API mounted and all pages registered."""
    reflex_fixes.install()  # before any event is handled
    # The FastAPI app is mounted first; the security middleware then wraps everything
    # (pages served by the backend, API, websocket).
    application = _App(api_transformer=[create_api(), SecurityMiddleware])
    # A tab's state is sent only to a connection proving its login (before Reflex's hydrate).
    application.add_middleware(TabGuard(), index=0)
    # Each backend worker runs a webhook processor (in a process of its own unless
    # WEBHOOK_PROCESSOR=inline); the inbox leases events so they share.
    application.register_lifespan_task(processor_process.run)
    # And delivers queued email (claimed row by row, so workers share the outbox too).
    application.register_lifespan_task(notifications.run_outbox)
    # And relays changes published by any worker to the live pages it serves.
    application.register_lifespan_task(changes.run_listener)
    for route, page, title in PAGES:
        application.add_page(page, route=route, title=title, on_load=_on_load(route, page))
    return application


app = build_app()
