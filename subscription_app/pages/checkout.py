"""`/checkout`: the plan, the card field (Stripe Elements) and the Subscribe button."""

import reflex as rx
from reflex.experimental.client_state import ClientStateVar

from subscription_app import routes
from subscription_app.components.layout import error_callout, page_frame, subscribed_notice
from subscription_app.pages.plan import plan_card
from subscription_app.state.auth import require_login
from subscription_app.state.billing import CheckoutState, js_call_in_page

# In the browser only: the attempt (`CheckoutState.attempt`) whose Subscribe was pressed. The
# button is busy from the press itself until the server's answer moves the attempt on.
PRESSED_ATTEMPT = ClientStateVar.create("checkout_pressed_attempt", -1)
BUSY = CheckoutState.processing | (PRESSED_ATTEMPT.value == CheckoutState.attempt)


def _card_field() -> rx.Component:
    # Stripe.js mounts the card Element into #card-element as soon as the page shows it (no
    # server round trip first): on a full load checkout.js does it from the server's HTML,
    # before the app is live; on navigation in the app, the field's on_mount does (the
    # websocket is up by then, so Reflex runs the script at once). It stays
    # in the DOM for the life of the page (hidden, not removed), and React leaves its
    # contents alone (set as inner HTML, which React neither hydrates nor re-renders), so
    # Stripe's inputs are never thrown away.
    return rx.vstack(
        rx.el.label("Card details", id="card-label", html_for="card-element", font_weight="500"),
        rx.html(
            "",
            id="card-element",
            role="group",
            aria_labelledby="card-label",
            custom_attrs={
                "data-publishable-key": CheckoutState.publishable_key,
                "data-js-url": CheckoutState.stripe_js_url,
            },
            # Tell the server how the mount went (on a full load, checkout.js's own mount:
            # a second call for the same field gets its answer, not a new Element).
            on_mount=rx.call_script(
                js_call_in_page(
                    "mount", CheckoutState.publishable_key, CheckoutState.stripe_js_url
                ),
                callback=CheckoutState.card_mounted,
            ),
            style={
                "padding": "0.75rem",
                "border": "1px solid var(--gray-a7)",
                "borderRadius": "var(--radius-3)",
                "minHeight": "2.75rem",
                "maxWidth": "100%",
                "overflowX": "auto",
            },
        ),
        rx.cond(
            CheckoutState.card_loaded,
            rx.fragment(),
            rx.cond(
                CheckoutState.error == "",
                rx.text(
                    "Loading the secure card form…",
                    size="2",
                    color_scheme="gray",
                    # Gone as soon as Stripe's inputs are in (before the server hears of it).
                    style={"#card-element:not(:empty) ~ &": {"display": "none"}},
                ),
                rx.fragment(),
            ),
        ),
        spacing="2",
        width="100%",
        display=rx.cond(CheckoutState.succeeded | CheckoutState.already_subscribed, "none", "flex"),
    )


def _subscribe_button() -> rx.Component:
    # The press goes straight to Stripe.js (checkout.js confirms the SetupIntent); the
    # server hears from the browser once, with the payment method id.
    return rx.button(
        rx.cond(BUSY, "Processing…", "Subscribe"),
        on_click=[
            PRESSED_ATTEMPT.set_value(CheckoutState.attempt),
            rx.call_script(
                js_call_in_page(
                    "confirmSetup", CheckoutState.setup_client_secret, CheckoutState.attempt
                ),
                callback=CheckoutState.card_confirmed,
            ),
        ],
        loading=BUSY,
        disabled=BUSY | ~CheckoutState.card_ready,
        aria_busy=BUSY,
        size="3",
        width="100%",
        display=rx.cond(
            CheckoutState.succeeded | CheckoutState.already_subscribed, "none", "inline-flex"
        ),
    )


def _success() -> rx.Component:
    return rx.cond(CheckoutState.succeeded, subscribed_notice(CheckoutState.pending), rx.fragment())


def _already_subscribed() -> rx.Component:
    return rx.cond(
        CheckoutState.already_subscribed,
        rx.callout(
            rx.vstack(
                rx.text("You already have an active subscription."),
                rx.link("Go to your dashboard", href=routes.DASHBOARD),
                spacing="2",
            ),
            icon="info",
            role="status",
        ),
        rx.fragment(),
    )


def _card_scripts_fetched_ahead() -> rx.Component:
    # Fetched as the page starts, in parallel with the app's own files, the websocket and
    # the login check; both run as soon as they arrive, never holding up the page:
    # - Stripe.js (async, marked for checkout.js, which listens to it);
    # - checkout.js (async, kept by the browser at its versioned address), which mounts the
    #   card field from the server's HTML as soon as the parser reaches it and Stripe.js has
    #   run.
    return rx.fragment(
        rx.el.script(
            src=CheckoutState.stripe_js_url, custom_attrs={"async": True, "data-stripe-js": "page"}
        ),
        rx.el.script(src=routes.CHECKOUT_SCRIPT_URL, custom_attrs={"async": True}),
    )


# The card field shows (and Stripe.js mounts) before the login check answers: a logged-out
# visitor sees the plan and an empty card field for a moment, then the login page.
@require_login(ahead=_card_scripts_fetched_ahead, shown_while_checking=True)
def checkout() -> rx.Component:
    """The checkout page (login required)."""
    return page_frame(
        plan_card(),
        rx.vstack(
            _already_subscribed(),
            _success(),
            error_callout(CheckoutState.error),
            _card_field(),
            _subscribe_button(),
            rx.text(
                "Your card details go straight to Stripe; they never touch our servers.",
                size="2",
                color_scheme="gray",
            ),
            spacing="4",
            width="100%",
            max_width="480px",
        ),
        title="Checkout",
    )
