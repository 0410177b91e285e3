"""The one error type a person may read, and the kinds that say what went wrong.

Services raise `AppError` (or a subclass: `accounts.AccountError`, `ratelimit.RateLimited`,
`billing.errors.BillingError`) with a message fit to show. The edges translate the kind once:
`api/app.py` into an HTTP status, the Reflex states into a message on the page.
"""

from __future__ import annotations

from typing import Literal

ErrorKind = Literal[
    "invalid",  # the input is wrong (422)
    "unauthorized",  # unknown email or wrong password, no or bad token (401)
    "forbidden",  # not yours (403)
    "conflict",  # the current state does not allow it (409)
    "card",  # the card was refused (402)
    "limited",  # too many attempts; retry after `retry_after` seconds (429)
    "unavailable",  # Stripe unreachable or not set up; a retry never charges twice (424)
    "busy",  # the server is at capacity for this work; retry after `retry_after` seconds (503)
]


class AppError(Exception):
    """A problem with a message that is safe and useful to show the person who caused it."""

    kind: ErrorKind = "invalid"

    def __init__(
        self, message: str, *, kind: ErrorKind | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind
        self.retry_after = retry_after
