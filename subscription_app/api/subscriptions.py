"""`/api/v1/subscriptions`: subscribe with a payment method, read my subscription."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from subscription_app.api.deps import CurrentUser, SessionDep, client_address
from subscription_app.billing import service
from subscription_app.billing.plans import DEFAULT_PLAN
from subscription_app.billing.repository import SubscriptionView

router = APIRouter(prefix="/subscriptions", tags=["subscriptions"])

STATUS_FOR_KIND = {
    "invalid": status.HTTP_422_UNPROCESSABLE_CONTENT,
    "forbidden": status.HTTP_403_FORBIDDEN,
    "conflict": status.HTTP_409_CONFLICT,
    "card": status.HTTP_402_PAYMENT_REQUIRED,
    "limited": status.HTTP_429_TOO_MANY_REQUESTS,
    # Stripe unreachable or timing out: the request could not be completed because a service
    # it depends on failed (nothing was charged; the client may retry).
    "unavailable": status.HTTP_424_FAILED_DEPENDENCY,
}


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
    cancel_at_period_end: bool
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
    """The API shape of a subscription view."""
    if view is None:
        return None
    return SubscriptionOut(
        plan=DEFAULT_PLAN.name,
        price=DEFAULT_PLAN.price_label,
        amount_cents=DEFAULT_PLAN.amount_cents,
        currency=DEFAULT_PLAN.currency,
        interval=DEFAULT_PLAN.interval,
        status=view.status,
        started_at=view.started_at,
        current_period_end=view.current_period_end,
        cancel_at_period_end=view.cancel_at_period_end,
        canceled_at=view.canceled_at,
        ended_at=view.ended_at,
    )


def _fail(exc: service.BillingError) -> HTTPException:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return HTTPException(STATUS_FOR_KIND[exc.kind], detail=exc.message, headers=headers)


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
    try:
        result = service.start_subscription(
            session=session,
            user=user,
            payment_method_id=body.payment_method_id,
            client_address=client_address(request),
        )
    except service.BillingError as exc:
        raise _fail(exc) from exc
    return SubscribeOut(
        status=result.status,
        client_secret=result.client_secret,
        subscription=to_out(result.subscription),
    )


@router.post("/confirm", response_model=SubscribeOut)
def confirm(session: SessionDep, user: CurrentUser) -> SubscribeOut:
    """After 3-D Secure in the browser: settle the pending subscription."""
    try:
        result = service.confirm_subscription(session=session, user=user)
    except service.BillingError as exc:
        raise _fail(exc) from exc
    return SubscribeOut(status=result.status, subscription=to_out(result.subscription))


@router.post("/setup-intent")
def setup_intent(session: SessionDep, user: CurrentUser, request: Request) -> dict[str, str]:
    """A SetupIntent client secret (plus the publishable key) for collecting a card.

    429 (with `Retry-After`) when too many were asked for by this person or address.
    """
    try:
        client_secret = service.create_setup_intent(
            session=session, user=user, client_address=client_address(request)
        )
    except service.BillingError as exc:
        raise _fail(exc) from exc
    return {"client_secret": client_secret, **service.publishable_config()}


class CancelIn(BaseModel):
    """When the subscription should end."""

    model_config = ConfigDict(extra="forbid")

    at_period_end: bool = Field(
        default=True,
        description="true: keep access until the renewal date (default); false: end now.",
    )


class CancelOut(BaseModel):
    """The subscription after the change, and what happened in words."""

    message: str
    subscription: SubscriptionOut


@router.post("/cancel", response_model=CancelOut)
def cancel(body: CancelIn, session: SessionDep, user: CurrentUser) -> CancelOut:
    """Cancel at the end of the period (default) or now. 409 if there is nothing to cancel."""
    try:
        result = service.cancel_subscription(
            session=session, user=user, at_period_end=body.at_period_end
        )
    except service.BillingError as exc:
        raise _fail(exc) from exc
    return CancelOut(message=result.message, subscription=to_out(result.subscription))


@router.post("/resume", response_model=CancelOut)
def resume(session: SessionDep, user: CurrentUser) -> CancelOut:
    """Undo a cancellation at period end. 409 if the subscription is not set to end."""
    try:
        result = service.resume_subscription(session=session, user=user)
    except service.BillingError as exc:
        raise _fail(exc) from exc
    return CancelOut(message=result.message, subscription=to_out(result.subscription))


@router.get("/me", response_model=MySubscriptionOut)
def my_subscription(session: SessionDep, user: CurrentUser) -> MySubscriptionOut:
    """The caller's subscription: plan, price, status, start and renewal dates."""
    return MySubscriptionOut(
        subscription=to_out(service.get_subscription(session=session, user=user))
    )
