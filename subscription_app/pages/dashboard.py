"""`/dashboard`: the logged-in user's subscription."""

import reflex as rx

from subscription_app import routes
from subscription_app.components.layout import page_frame
from subscription_app.state.auth import AuthState, require_login


@require_login
def dashboard() -> rx.Component:
    """The dashboard (login required)."""
    return page_frame(
        rx.text("Signed in as ", rx.text.strong(AuthState.user_email)),
        rx.card(
            rx.vstack(
                rx.heading("Subscription", as_="h2", size="5"),
                rx.text("No active subscription"),
                rx.link("See the plan", href=routes.PLAN),
                spacing="3",
                align="start",
            ),
            width="100%",
        ),
        title="Dashboard",
    )
