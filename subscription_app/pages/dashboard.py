"""`/dashboard`: the logged-in user's subscription."""

import reflex as rx

from subscription_app import routes
from subscription_app.components.layout import error_callout, page_frame
from subscription_app.state.auth import AuthState, require_login
from subscription_app.state.billing import PLAN_NAME, PLAN_PRICE, DashboardState


def _fact(label: str, value) -> rx.Component:
    return rx.data_list.item(
        rx.data_list.label(label),
        rx.data_list.value(value),
    )


def _subscription_details() -> rx.Component:
    return rx.vstack(
        rx.data_list.root(
            _fact("Plan", PLAN_NAME),
            _fact("Price", PLAN_PRICE),
            _fact("Status", DashboardState.status_label),
            _fact("Started", DashboardState.started_on),
            rx.cond(
                DashboardState.is_live,
                _fact(
                    rx.cond(DashboardState.cancel_at_period_end, "Access ends", "Next renewal"),
                    DashboardState.renews_on,
                ),
                _fact("Canceled", DashboardState.canceled_on),
            ),
            orientation={"initial": "vertical", "sm": "horizontal"},
        ),
        spacing="3",
        align="start",
        width="100%",
    )


def _no_subscription() -> rx.Component:
    return rx.vstack(
        rx.text("No active subscription"),
        rx.link("See the plan", href=routes.PLAN),
        spacing="2",
        align="start",
    )


@require_login
def dashboard() -> rx.Component:
    """The dashboard (login required)."""
    return page_frame(
        rx.text("Signed in as ", rx.text.strong(AuthState.user_email)),
        error_callout(DashboardState.load_error),
        rx.card(
            rx.vstack(
                rx.heading("Subscription", as_="h2", size="5"),
                rx.cond(
                    DashboardState.is_live,
                    _subscription_details(),
                    rx.fragment(
                        _no_subscription(),
                        rx.cond(DashboardState.has_subscription, _subscription_details()),
                    ),
                ),
                spacing="3",
                align="start",
                width="100%",
            ),
            width="100%",
        ),
        title="Dashboard",
    )
