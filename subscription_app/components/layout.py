"""Page frame: header with navigation, a centred content column that fits a phone."""

from __future__ import annotations

import reflex as rx

from subscription_app import routes
from subscription_app.state.auth import AuthState

APP_NAME = "Subscription App"


def _nav_link(text: str, href: str) -> rx.Component:
    return rx.link(text, href=href, size="3", weight="medium")


def navbar() -> rx.Component:
    """Top bar: app name, main links, and the account actions."""
    return rx.el.header(
        rx.flex(
            rx.link(
                rx.text(APP_NAME, size="4", weight="bold"), href=routes.LANDING, underline="none"
            ),
            rx.el.nav(
                rx.flex(
                    _nav_link("Plan", routes.PLAN),
                    rx.cond(
                        AuthState.logged_in,
                        rx.fragment(
                            _nav_link("Dashboard", routes.DASHBOARD),
                            rx.button(
                                "Log out",
                                on_click=AuthState.logout,
                                variant="soft",
                                size="2",
                            ),
                        ),
                        rx.fragment(
                            _nav_link("Log in", routes.LOGIN),
                            _nav_link("Register", routes.REGISTER),
                        ),
                    ),
                    spacing="4",
                    align="center",
                    wrap="wrap",
                ),
                aria_label="Main",
            ),
            justify="between",
            align="center",
            wrap="wrap",
            spacing="3",
            padding="0.75rem 1rem",
            max_width="960px",
            margin_x="auto",
        ),
        border_bottom="1px solid var(--gray-a5)",
        width="100%",
    )


def page_frame(*children: rx.Component, title: str | None = None) -> rx.Component:
    """Wrap page content in the common frame. `title` becomes the page's h1."""
    return rx.box(
        navbar(),
        rx.el.main(
            rx.vstack(
                rx.heading(title, as_="h1", size="7") if title else rx.fragment(),
                *children,
                spacing="5",
                width="100%",
                align="stretch",
            ),
            max_width="960px",
            margin_x="auto",
            padding="1.5rem 1rem",
            width="100%",
        ),
        width="100%",
        min_height="100vh",
        overflow_x="hidden",
    )


def error_callout(message: str | rx.Var[str]) -> rx.Component:
    """An error message that screen readers announce (role=alert); hidden when empty.

    `message` is a state var (`State.error`, which mypy sees as its declared `str`) or text.
    """
    return rx.cond(
        message != "",
        rx.callout(message, icon="triangle_alert", color_scheme="red", role="alert"),
        rx.fragment(),
    )


def labelled_input(
    label: str, name: str, *, type_: str = "text", autocomplete: str | None = None, **props
) -> rx.Component:
    """A text field with a visible label tied to it (found by its label in tests)."""
    field_id = f"field-{name}"
    return rx.vstack(
        rx.el.label(label, html_for=field_id, style={"fontWeight": "500"}),
        rx.input(
            id=field_id,
            name=name,
            type=type_,
            auto_complete=autocomplete,
            size="3",
            width="100%",
            **props,
        ),
        spacing="1",
        width="100%",
        align="stretch",
    )


def subscribed_notice(pending: rx.Var[bool] | bool) -> rx.Component:
    """The confirmation after subscribing (either way), with the way to the dashboard."""
    return rx.callout(
        rx.vstack(
            rx.text(
                rx.cond(
                    pending,
                    "Payment received. Your subscription will be active in a moment.",
                    "You're subscribed! Your subscription is active.",
                ),
                weight="bold",
            ),
            rx.link("Go to your dashboard", href=routes.DASHBOARD),
            spacing="2",
        ),
        icon="circle_check",
        color_scheme="green",
        role="status",
    )
