"""The one configured Stripe client. Nothing outside `billing/` imports `stripe`."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import stripe

from subscription_app.billing.errors import NotSetUp
from subscription_app.settings import Settings, get_settings

# The SDK logs every request at INFO with its URL, which names Stripe ids in clear
# (`/v1/subscriptions/sub_...`); our processes log at INFO. Its warnings and errors still show.
logging.getLogger("stripe").setLevel(logging.WARNING)

# Seconds to wait for Stripe before giving up on one attempt (the SDK retries on top).
STRIPE_TIMEOUT_SECONDS = 20
STRIPE_MAX_NETWORK_RETRIES = 2


class StripeNotConfigured(NotSetUp):
    """Raised when code needs Stripe but no STRIPE_SECRET_KEY is set.

    People see "payments are not set up" (424 in the API); the log says what to set.
    """


class TimedRequestsClient(stripe.RequestsClient):
    """The SDK's HTTP client, optionally appending each call's duration to a file.

    Set STRIPE_TIMING_LOG=<path> (benchmarks do) to get one line per Stripe call:
    ``<unix start> <milliseconds> <METHOD> <path>``. Off by default; nothing secret is written.
    """

    _lock = threading.Lock()

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[Any, int, Mapping[str, str]]:
        """Perform one HTTP request to Stripe (timed when a timing log is configured).

        The signature is `stripe.HTTPClient.request`'s. The body is `Any` because the SDK
        disagrees with itself: `HTTPClient` declares `str`, `RequestsClient` returns `bytes`.
        `_usage` is accepted for that signature; `RequestsClient.request` takes no such argument.
        """
        log_path = os.environ.get("STRIPE_TIMING_LOG")
        if not log_path:
            return super().request(method, url, headers, post_data)
        started = time.time()
        clock = time.perf_counter()
        try:
            return super().request(method, url, headers, post_data)
        finally:
            elapsed_ms = (time.perf_counter() - clock) * 1000
            line = f"{started:.6f} {elapsed_ms:.3f} {method.upper()} {urlsplit(url).path}\n"
            with self._lock, open(log_path, "a") as log:
                log.write(line)


def build_client(settings: Settings) -> stripe.StripeClient:
    """A `StripeClient` for these settings: real Stripe, or the emulator at STRIPE_API_BASE."""
    if settings.stripe_secret_key is None:
        raise StripeNotConfigured(
            "STRIPE_SECRET_KEY is not set. Run `make run` (it starts the local Stripe "
            "emulator) or set your Stripe test keys; see README."
        )
    return stripe.StripeClient(
        settings.stripe_secret_key.get_secret_value(),
        # A literal, so mypy checks it against the SDK's `BaseAddresses` TypedDict.
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
        max_network_retries=STRIPE_MAX_NETWORK_RETRIES,
        http_client=TimedRequestsClient(timeout=STRIPE_TIMEOUT_SECONDS),
    )


@lru_cache(maxsize=1)
def get_client() -> stripe.StripeClient:
    """The process-wide Stripe client (pinned to the SDK's API version)."""
    return build_client(get_settings())
