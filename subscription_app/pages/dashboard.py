"""`/dashboard`: the logged-in user's subscription, live; cancel and undo."""

import reflex as rx
from reflex.experimental.client_state import ClientStateVar

from subscription_app import routes
from subscription_app.components.layout import error_callout, page_frame
from subscription_app.state.auth import AuthState, require_login
from subscription_app.state.billing import CANCEL_AT_PERIOD_END, CANCEL_NOW, DashboardState

SUBSCRIPTION = DashboardState.subscription

# In the browser only, as `DashboardState.action_seq` stood when the dialog was opened and
# when Confirm or Undo was pressed: the dialog opens at once, and the pressed button is busy
# from the press itself, until the server's answer moves `action_seq` on.
DIALOG_OPENED_AT = ClientStateVar.create("cancel_dialog_opened_at", -1)
PRESSED_AT = ClientStateVar.create("billing_action_pressed_at", -1)
BUSY = PRESSED_AT.value == DashboardState.action_seq


def _press(event) -> list:
    """Mark the button busy in the page, and send the event."""
    return [PRESSED_AT.set_value(DashboardState.action_seq), event]


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
        SUBSCRIPTION.payment_warning != "",
        rx.callout(
            SUBSCRIPTION.payment_warning, icon="triangle_alert", color_scheme="amber", role="alert"
        ),
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
                    )
                ),
                rx.button(
                    "Confirm cancellation",
                    color_scheme="red",
                    # With the choice the dialog shows.
                    on_click=_press(
                        # mypy cannot follow an event called with an argument (TypeVarTuple).
                        DashboardState.confirm_cancel(DashboardState.cancel_when)  # type: ignore[misc]
                    ),
                    loading=BUSY,
                    disabled=BUSY,
                ),
                spacing="3",
                justify="end",
                wrap="wrap",
                margin_top="1rem",
            ),
        ),
        open=DIALOG_OPENED_AT.value == DashboardState.action_seq,
        # "Keep subscription" or Escape.
        on_open_change=DIALOG_OPENED_AT.set_value(-1),
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
            on_click=[
                DIALOG_OPENED_AT.set_value(DashboardState.action_seq),
                DashboardState.open_cancel_dialog,
            ],
        ),
        _cancel_dialog(),
        spacing="3",
        align="start",
        width="100%",
        # A dialog left open on another visit of the page does not come back by itself.
        on_mount=DIALOG_OPENED_AT.set_value(-1),
    )


def _ending_section() -> rx.Component:
    return rx.vstack(
        rx.text("Your subscription ends on ", rx.text.strong(SUBSCRIPTION.renews_on), "."),
        rx.button(
            "Undo cancellation",
            on_click=_press(DashboardState.undo_cancel),
            loading=BUSY,
            disabled=BUSY,
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


_CELL = {"padding": "0.5rem 0.75rem 0.5rem 0", "textAlign": "left", "whiteSpace": "nowrap"}


def _invoice_row(invoice) -> rx.Component:
    return rx.el.tr(
        rx.el.td(invoice.created_on, style=_CELL),
        rx.el.td(invoice.amount, style=_CELL),
        rx.el.td(invoice.status_label, style=_CELL),
        rx.el.td(
            rx.hstack(
                rx.link(
                    "View",
                    href=invoice.hosted_invoice_url,
                    is_external=True,
                    aria_label="View invoice " + invoice.number,
                ),
                rx.link(
                    "PDF",
                    href=invoice.invoice_pdf,
                    is_external=True,
                    aria_label="PDF of invoice " + invoice.number,
                ),
                spacing="3",
            ),
            style=_CELL,
        ),
        style={"borderTop": "1px solid var(--gray-a5)"},
    )


def _invoices() -> rx.Component:
    # A plain <table> named by its heading (Radix's table puts props on a wrapper div).
    return rx.card(
        rx.vstack(
            rx.heading("Invoices", as_="h2", size="4", id="invoices-heading"),
            error_callout(DashboardState.invoices_error),
            rx.cond(
                DashboardState.invoices,  # isTrue(): a non-empty list
                rx.box(
                    rx.el.table(
                        rx.el.thead(
                            rx.el.tr(
                                *[
                                    rx.el.th(name, scope="col", style=_CELL)
                                    for name in ("Date", "Amount", "Status", "Invoice")
                                ]
                            )
                        ),
                        rx.el.tbody(rx.foreach(DashboardState.invoices, _invoice_row)),
                        aria_labelledby="invoices-heading",
                        style={"borderCollapse": "collapse", "width": "100%"},
                    ),
                    overflow_x="auto",  # a narrow phone scrolls the table, not the page
                    width="100%",
                ),
                rx.text(
                    rx.cond(DashboardState.invoices_loaded, "No invoices yet.", "Loading…"),
                    color_scheme="gray",
                ),
            ),
            rx.cond(
                DashboardState.invoices_more,
                rx.text("Older invoices are in Manage billing.", size="2", color_scheme="gray"),
                rx.fragment(),
            ),
            spacing="3",
            align="start",
            width="100%",
        ),
        width="100%",
    )


def _manage_billing() -> rx.Component:
    return rx.cond(
        DashboardState.can_manage_billing,
        rx.button(
            "Manage billing",
            on_click=DashboardState.open_portal,
            loading=DashboardState.opening_portal,
            disabled=DashboardState.opening_portal,
            variant="outline",
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
                _manage_billing(),
                spacing="4",
                align="start",
                width="100%",
            ),
            width="100%",
        ),
        _messages(),
        _invoices(),
        title="Dashboard",
    )
