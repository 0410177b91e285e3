"""`/register` and `/login`."""

import reflex as rx

from subscription_app import accounts, routes
from subscription_app.components.layout import error_callout, labelled_input, page_frame
from subscription_app.state.auth import AuthState


def _form(*fields: rx.Component, submit_label: str, on_submit) -> rx.Component:
    return rx.form(
        rx.vstack(
            error_callout(AuthState.form_error),
            *fields,
            rx.button(
                submit_label,
                type="submit",
                size="3",
                width="100%",
                loading=AuthState.submitting,
                # Not before the page is live: until then a press (or Enter in a field) would
                # submit the form natively, a GET with the password in the address.
                disabled=AuthState.submitting | ~rx.State.is_hydrated,
            ),
            spacing="4",
            width="100%",
        ),
        on_submit=on_submit,
        reset_on_submit=False,
        width="100%",
        max_width="420px",
    )


def _email() -> rx.Component:
    return labelled_input("Email", "email", type_="email", autocomplete="email", required=True)


def _password(label: str, name: str, autocomplete: str, **rules) -> rx.Component:
    return labelled_input(
        label, name, type_="password", autocomplete=autocomplete, required=True, **rules
    )


def register() -> rx.Component:
    """Create an account."""
    return page_frame(
        _form(
            _email(),
            _password(
                "Password",
                "password",
                "new-password",
                min_length=accounts.PASSWORD_MIN_LENGTH,
                max_length=accounts.PASSWORD_MAX_LENGTH,
            ),
            _password("Confirm password", "confirm_password", "new-password"),
            rx.text(
                f"At least {accounts.PASSWORD_MIN_LENGTH} characters.",
                size="2",
                color_scheme="gray",
            ),
            submit_label="Create account",
            on_submit=AuthState.register,
        ),
        rx.text("Already have an account? ", rx.link("Log in", href=routes.LOGIN)),
        title="Create your account",
    )


def login() -> rx.Component:
    """Log in."""
    return page_frame(
        _form(
            _email(),
            _password("Password", "password", "current-password"),
            submit_label="Log in",
            on_submit=AuthState.login,
        ),
        rx.text("New here? ", rx.link("Create an account", href=routes.REGISTER)),
        title="Log in",
    )
