"""`/plan`: the plan, its price, and the Subscribe button."""

import reflex as rx

from subscription_app import routes
from subscription_app.billing.plans import DEFAULT_PLAN
from subscription_app.components.layout import error_callout, page_frame
from subscription_app.state.auth import AuthState
from subscription_app.state.billing import CheckoutState, PlanState, js_call_in_page


class PrefetchPage(rx.Component):
    """React Router's `<PrefetchPageLinks>`: another page's code, loaded ahead of a visit."""

    library = "react-router"
    tag = "PrefetchPageLinks"

    page: rx.Var[str]


def plan_card() -> rx.Component:
    """The plan name, price and what you get."""
    return rx.card(
        rx.vstack(
            rx.heading(DEFAULT_PLAN.name, as_="h2", size="6"),
            rx.text(DEFAULT_PLAN.price_label, size="6", weight="bold"),
            rx.heading("What you get", as_="h3", size="3"),
            rx.el.ul(
                *[rx.el.li(feature) for feature in DEFAULT_PLAN.features],
                style={"paddingLeft": "1.25rem", "margin": 0},
            ),
            spacing="3",
            align="start",
        ),
        width="100%",
        max_width="480px",
    )


def plan() -> rx.Component:
    """The plan page."""
    return page_frame(
        rx.cond(
            PlanState.notice != "",
            rx.callout(PlanState.notice, icon="info", role="status", max_width="480px"),
        ),
        error_callout(PlanState.checkout_error),
        plan_card(),
        rx.button(
            "Subscribe",
            # Straight to checkout (through the login page if needed), in the browser.
            on_click=rx.redirect(
                rx.cond(
                    AuthState.logged_in,
                    routes.CHECKOUT,
                    f"{routes.LOGIN}?next={routes.CHECKOUT}",
                )
            ),
            # Stripe.js is loaded while the plan is read, not when the card form needs it.
            on_mount=rx.call_script(js_call_in_page("preload", CheckoutState.stripe_js_url)),
            # Not before the page's login check has answered: until then `logged_in` still
            # says no, and a logged-in person would be sent to the login page.
            disabled=~rx.State.is_hydrated,
            size="3",
            width="100%",
            max_width="480px",
        ),
        rx.button(
            "Subscribe with Stripe Checkout",
            on_click=PlanState.start_checkout,
            loading=PlanState.redirecting,
            disabled=PlanState.redirecting,
            variant="outline",
            size="3",
            width="100%",
            max_width="480px",
        ),
        # The checkout page's code is in the browser before Subscribe is pressed.
        PrefetchPage.create(page=routes.CHECKOUT),
        rx.text(
            "Subscribe pays with the card form on our checkout page; Stripe Checkout takes you "
            "to Stripe's own payment page and back.",
            size="2",
            color_scheme="gray",
            max_width="480px",
        ),
        rx.cond(
            AuthState.logged_in,
            rx.fragment(),
            rx.text("You will be asked to log in first.", size="2", color_scheme="gray"),
        ),
        title="Our plan",
    )
