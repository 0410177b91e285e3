"""`/checkout/complete`: where Stripe Checkout returns; the subscription is recorded here."""

import reflex as rx

from subscription_app import routes
from subscription_app.components.layout import error_callout, page_frame, subscribed_notice
from subscription_app.state.auth import require_login
from subscription_app.state.billing import CheckoutReturnState


def _outcome() -> rx.Component:
    return rx.cond(
        CheckoutReturnState.result != "",
        subscribed_notice(CheckoutReturnState.result == "processing"),
        rx.cond(
            CheckoutReturnState.error != "",
            rx.vstack(
                error_callout(CheckoutReturnState.error),
                rx.cond(
                    CheckoutReturnState.already_subscribed,
                    rx.link("Go to your dashboard", href=routes.DASHBOARD),
                    rx.link("Back to the plan", href=routes.PLAN),
                ),
                spacing="3",
            ),
            rx.center(
                rx.spinner(size="3"),
                rx.text("Confirming your subscription…"),
                aria_label="Confirming your subscription",
                padding="2rem 0",
                spacing="2",
            ),
        ),
    )


@require_login
def checkout_complete() -> rx.Component:
    """The return page of Stripe Checkout (login required)."""
    return page_frame(
        rx.box(_outcome(), width="100%", max_width="480px"),
        title="Checkout",
    )
