"""Billing errors: what the services raise when a person's request cannot go through."""

from __future__ import annotations

from subscription_app.errors import AppError

NOT_SET_UP = (
    "Subscriptions are not available right now: payments are not set up. Please try again later."
)


class BillingError(AppError):
    """A billing problem with a message fit for the user; `kind` says which (see `AppError`)."""


class AlreadySubscribed(BillingError):
    """The user already has a live subscription."""

    def __init__(self) -> None:
        super().__init__(
            "You already have an active subscription. See your dashboard.", kind="conflict"
        )


class NotSetUp(BillingError):
    """Stripe or the plan's price is not configured: an operator must act, not the person.

    The person reads `message`; `str(exc)` (what logs and `make run` print) says what to set.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(NOT_SET_UP, kind="unavailable")
        self.detail = detail

    def __str__(self) -> str:
        return self.detail
