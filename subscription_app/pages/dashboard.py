"""`/dashboard`: the logged-in user's subscription, live; cancel and undo."""

import reflex as rx

from subscription_app import routes
from subscription_app.billing.handlers import PAYMENT_FAILED_TEXT
from subscription_app.components.layout import error_callout, page_frame
from subscription_app.state.auth import AuthState, require_login
from subscription_app.state.billing import CANCEL_AT_PERIOD_END, CANCEL_NOW, DashboardState

SUBSCRIPTION = DashboardState.subscription


def _fact(label, value) -> rx.Component:
    return rx.data_list.item(rx.data_list.label(label), rx.data_list.value(value))


def _subscription_details() -> rx.Component:
    return rx.data_list.root(
        _fact("Plan", SUBSCRIPTION.plan),
        _fact("Price", SUBSCRIPTION.price),
        _fact("Status", SUBSCRIPTION.status_label),
        _fact("Started", SUBSCRIPTION.started_on),
        rx.cond(
            SUBSCRIPTION.is_live,
            _fact(
                rx.cond(SUBSCRIPTION.cancel_at_period_end, "Access ends", "Next renewal"),
                SUBSCRIPTION.renews_on,
            ),
            _fact("Canceled", SUBSCRIPTION.canceled_on),
        ),
        orientation={"initial": "vertical", "sm": "horizontal"},
    )


def _past_due_warning() -> rx.Component:
    return rx.cond(
        SUBSCRIPTION.past_due,
        rx.callout(PAYMENT_FAILED_TEXT, icon="triangle_alert", color_scheme="amber", role="alert"),
    )


def _cancel_dialog() -> rx.Component:
    return rx.alert_dialog.root(
        rx.alert_dialog.content(
            rx.alert_dialog.title("Cancel your subscription?"),
            rx.alert_dialog.description(
                rx.cond(
                    DashboardState.cancel_when == CANCEL_NOW,
                    "Your access ends now. This cannot be undone.",
                    "You keep access until "
                    + SUBSCRIPTION.renews_on
                    + ". You can undo this before then.",
                )
            ),
            rx.flex(
                rx.alert_dialog.cancel(
                    rx.button(
                        "Keep subscription",
                        variant="soft",
                        color_scheme="gray",
                        on_click=DashboardState.close_cancel_dialog,
                    )
                ),
                rx.button(
                    "Confirm cancellation",
                    color_scheme="red",
                    on_click=DashboardState.confirm_cancel,
                    loading=DashboardState.working,
                    disabled=DashboardState.working,
                ),
                spacing="3",
                justify="end",
                wrap="wrap",
                margin_top="1rem",
            ),
        ),
        open=DashboardState.cancel_dialog_open,
    )


def _cancel_section() -> rx.Component:
    return rx.vstack(
        rx.heading("Cancel subscription", as_="h3", size="3"),
        rx.el.fieldset(
            rx.el.legend("When should it end?", style={"marginBottom": "0.5rem"}),
            rx.radio_group(
                [CANCEL_AT_PERIOD_END, CANCEL_NOW],
                # Uncontrolled: the choice shows at once; the state follows via on_change.
                default_value=CANCEL_AT_PERIOD_END,
                on_change=DashboardState.set_cancel_when,
                direction="column",
            ),
            style={"border": "none", "padding": 0, "margin": 0},
        ),
        rx.button(
            "Cancel subscription",
            color_scheme="red",
            variant="soft",
            on_click=DashboardState.open_cancel_dialog,
        ),
        _cancel_dialog(),
        spacing="3",
        align="start",
        width="100%",
    )


def _ending_section() -> rx.Component:
    return rx.vstack(
        rx.text("Your subscription ends on ", rx.text.strong(SUBSCRIPTION.renews_on), "."),
        rx.button(
            "Undo cancellation",
            on_click=DashboardState.undo_cancel,
            loading=DashboardState.working,
            disabled=DashboardState.working,
        ),
        spacing="2",
        align="start",
    )


def _messages() -> rx.Component:
    return rx.cond(
        DashboardState.messages,  # isTrue(): a non-empty list
        rx.card(
            rx.vstack(
                rx.heading("Messages", as_="h2", size="4"),
                rx.el.ul(
                    rx.foreach(DashboardState.messages, lambda m: rx.el.li(m)),
                    style={"paddingLeft": "1.25rem", "margin": 0},
                ),
                spacing="2",
                align="start",
            ),
            width="100%",
        ),
    )


@require_login
def dashboard() -> rx.Component:
    """The dashboard (login required)."""
    return page_frame(
        rx.text("Signed in as ", rx.text.strong(AuthState.user_email)),
        error_callout(DashboardState.load_error),
        _past_due_warning(),
        rx.cond(
            DashboardState.result_message != "",
            rx.callout(DashboardState.result_message, icon="info", role="status"),
        ),
        error_callout(DashboardState.action_error),
        rx.card(
            rx.vstack(
                rx.heading("Subscription", as_="h2", size="5"),
                rx.cond(
                    SUBSCRIPTION.is_live,
                    rx.fragment(
                        _subscription_details(),
                        rx.cond(
                            SUBSCRIPTION.cancel_at_period_end,
                            _ending_section(),
                            _cancel_section(),
                        ),
                    ),
                    rx.fragment(
                        rx.text("No active subscription"),
                        rx.cond(DashboardState.has_subscription, _subscription_details()),
                        rx.link("See the plan", href=routes.PLAN),
                    ),
                ),
                spacing="4",
                align="start",
                width="100%",
            ),
            width="100%",
        ),
        _messages(),
        title="Dashboard",
    )
