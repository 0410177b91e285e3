"""`/`: what the product is, and where to go next."""

import reflex as rx

from subscription_app import routes
from subscription_app.billing.plans import DEFAULT_PLAN
from subscription_app.components.layout import page_frame


def landing() -> rx.Component:
    """The landing page."""
    return page_frame(
        rx.text(
            f"One simple plan, {DEFAULT_PLAN.price_label}. Subscribe in a minute with your "
            "card, see your subscription at a glance, and cancel whenever you like.",
            size="4",
        ),
        rx.flex(
            rx.link(rx.text("See the plan"), href=routes.PLAN, size="4"),
            rx.link(rx.text("Create an account"), href=routes.REGISTER, size="4"),
            spacing="5",
            wrap="wrap",
        ),
        title="Subscriptions made simple",
    )
