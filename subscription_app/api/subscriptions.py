"""`/api/v1/subscriptions`: subscribe with a payment method, read my subscription."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from subscription_app.api.deps import CurrentUser, SessionDep, client_address
from subscription_app.billing import service
from subscription_app.billing.views import SubscriptionView

router = APIRouter(prefix="/subscriptions", tags=["subscriptions"])


class SubscribeIn(BaseModel):
    """The payment method Stripe.js produced for the user's card."""

    model_config = ConfigDict(extra="forbid")

    payment_method_id: str = Field(min_length=4, max_length=255, examples=["pm_1Abc..."])


class SubscriptionOut(BaseModel):
    """A subscription as API clients see it."""

    plan: str
    price: str
    amount_cents: int
    currency: str
    interval: str
    status: str
    started_at: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool = Field(
        description="Set to end: it ends at `cancel_at` (usually the period's end), not renewing."
    )
    cancel_at: datetime | None = Field(
        default=None, description="When a subscription set to end ends; null otherwise."
    )
    canceled_at: datetime | None
    ended_at: datetime | None


class MySubscriptionOut(BaseModel):
    """`subscription` is null when the user never subscribed."""

    subscription: SubscriptionOut | None


class SubscribeOut(BaseModel):
    """Outcome of a subscribe call."""

    status: Literal["active", "requires_action", "processing"]
    client_secret: str | None = None
    subscription: SubscriptionOut | None = None


def to_out(view: SubscriptionView | None) -> SubscriptionOut | None:
    """The API shape of a subscription view (its fields are picked by name)."""
    return SubscriptionOut.model_validate(view, from_attributes=True) if view else None


@router.post("/subscribe", response_model=SubscribeOut)
def subscribe(
    body: SubscribeIn, session: SessionDep, user: CurrentUser, request: Request
) -> SubscribeOut:
    """Subscribe to the default plan with a payment method made by Stripe.js.

    200 with status "active" (done) or "requires_action" (finish 3-D Secure with
    `client_secret` and `confirmCardPayment`, then call `/confirm`); 402 card problems,
    409 already subscribed, 422 bad payment method, 424 Stripe unavailable, 429 too many
    card attempts (card testing; `Retry-After` says when to try again).
    """
    result = service.start_subscription(
        session=session,
        user=user,
        payment_method_id=body.payment_method_id,
        client_address=client_address(request),
    )
    return SubscribeOut(
        status=result.status,
        client_secret=result.client_secret,
        subscription=to_out(result.subscription),
    )


class ConfirmIn(BaseModel):
    """Which payment the browser just confirmed (optional, recommended)."""

    model_config = ConfigDict(extra="forbid")

    payment_intent_id: str | None = Field(
        default=None,
        max_length=255,
        pattern=r"^pi_[A-Za-z0-9]+$",
        description=(
            "The PaymentIntent of `client_secret` (the part before `_secret_`). Given, an "
            "attempt replaced meanwhile by a newer one (another tab) is answered 409 and the "
            "newer one is left alone; without it the open attempt is settled, whichever it is."
        ),
        examples=["pi_1Abc..."],
    )


@router.post("/confirm", response_model=SubscribeOut)
def confirm(session: SessionDep, user: CurrentUser, body: ConfirmIn | None = None) -> SubscribeOut:
    """After 3-D Secure in the browser: settle the pending subscription.

    200 as `/subscribe`; 402 authentication failed (the attempt is undone); 409 nothing
    waiting for confirmation, or the attempt was replaced by a newer one.
    """
    result = service.confirm_subscription(
        session=session, user=user, payment_intent_id=body.payment_intent_id if body else None
    )
    return SubscribeOut(status=result.status, subscription=to_out(result.subscription))


@router.post("/setup-intent")
def setup_intent(session: SessionDep, user: CurrentUser, request: Request) -> dict[str, str]:
    """A SetupIntent client secret (plus the publishable key) for collecting a card.

    429 (with `Retry-After`) when too many were asked for by this person or address, or when
    Stripe declined too many of this person's cards (counted from its webhooks).
    """
    client_secret = service.create_setup_intent(
        session=session, user=user, client_address=client_address(request)
    )
    return {"client_secret": client_secret, **service.publishable_config()}


class CancelIn(BaseModel):
    """When the subscription should end."""

    model_config = ConfigDict(extra="forbid")

    # Strict: "no", "off", 0 would otherwise read as false and end the subscription now.
    at_period_end: StrictBool = Field(
        default=True,
        description="true: keep access until the renewal date (default); false: end now.",
    )


class CancelOut(BaseModel):
    """The subscription after the change, and what happened in words."""

    message: str
    subscription: SubscriptionOut | None


@router.post("/cancel", response_model=CancelOut)
def cancel(session: SessionDep, user: CurrentUser, body: CancelIn | None = None) -> CancelOut:
    """Cancel at the end of the period (default, also with no body) or now.

    409 if there is nothing to cancel; 429 past the caller's Stripe requests.
    """
    result = service.cancel_subscription(
        session=session, user=user, at_period_end=body.at_period_end if body else True
    )
    return CancelOut(message=result.message, subscription=to_out(result.subscription))


@router.post("/resume", response_model=CancelOut)
def resume(session: SessionDep, user: CurrentUser) -> CancelOut:
    """Undo a cancellation at period end. 409 if the subscription is not set to end; 429 past
    the caller's Stripe requests."""
    result = service.resume_subscription(session=session, user=user)
    return CancelOut(message=result.message, subscription=to_out(result.subscription))


@router.get("/me", response_model=MySubscriptionOut)
def my_subscription(session: SessionDep, user: CurrentUser) -> MySubscriptionOut:
    """The caller's subscription: plan, price, status, start and renewal dates."""
    return MySubscriptionOut(
        subscription=to_out(service.get_subscription(session=session, user=user))
    )


class UrlOut(BaseModel):
    """Where to send the browser next (a Stripe-hosted page)."""

    url: str


@router.post("/checkout-session", status_code=201, response_model=UrlOut)
def checkout_session(session: SessionDep, user: CurrentUser) -> UrlOut:
    """Start Stripe Checkout for the default plan: 201 with the page's URL.

    409 when already subscribed; 429 (with Retry-After) at the card-testing limit or past the
    caller's Stripe requests (`RATE_LIMIT_STRIPE_REQUESTS_PER_MINUTE`). Back from
    Checkout, Stripe sends the browser to the app's return page
    (`/checkout/complete?session_id=...`); API clients then call `/checkout-session/complete`.
    """
    return UrlOut(url=service.start_checkout(session=session, user=user))


class CheckoutCompleteIn(BaseModel):
    """The Checkout Session the person came back from."""

    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(min_length=4, max_length=255, examples=["cs_test_a1B2..."])


@router.post("/checkout-session/complete", response_model=SubscribeOut)
def complete_checkout(
    body: CheckoutCompleteIn, session: SessionDep, user: CurrentUser
) -> SubscribeOut:
    """Record the subscription a finished Checkout Session made (webhook or not).

    403 for a session that is not the caller's (or does not exist); 409 when it is not
    completed, or the caller already had another subscription; 429 past the caller's Stripe
    requests (`RATE_LIMIT_STRIPE_REQUESTS_PER_MINUTE`).
    """
    result = service.complete_checkout(
        session=session, user=user, checkout_session_id=body.session_id
    )
    return SubscribeOut(status=result.status, subscription=to_out(result.subscription))


@router.post("/portal-session", response_model=UrlOut)
def portal_session(session: SessionDep, user: CurrentUser) -> UrlOut:
    """Stripe's customer portal for the caller (returns to the dashboard). 409: never
    subscribed; 429: at the card-testing limit (the portal takes cards too), or past the
    caller's Stripe requests (`RATE_LIMIT_STRIPE_REQUESTS_PER_MINUTE`)."""
    return UrlOut(url=service.open_billing_portal(session=session, user=user))


class InvoiceOut(BaseModel):
    """One invoice: its number, when, how much was paid, and Stripe's pages for it."""

    model_config = ConfigDict(from_attributes=True)

    number: str
    created: datetime | None
    amount_paid: int
    currency: str
    status: str
    hosted_invoice_url: str
    invoice_pdf: str


class InvoicesOut(BaseModel):
    """The caller's latest invoices, newest first (drafts are not shown)."""

    invoices: list[InvoiceOut]
    has_more: bool = Field(
        description="Older invoices exist than those listed: the customer portal lists them all."
    )


@router.get("/invoices", response_model=InvoicesOut)
def invoices(session: SessionDep, user: CurrentUser) -> InvoicesOut:
    """The caller's own latest invoices (up to 24), newest first; drafts are left out. 429
    past the caller's Stripe requests (`RATE_LIMIT_STRIPE_REQUESTS_PER_MINUTE`)."""
    history = service.list_invoices(session=session, user=user)
    return InvoicesOut(
        invoices=[InvoiceOut.model_validate(view) for view in history.invoices],
        has_more=history.has_more,
    )
