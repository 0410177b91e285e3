"""The one configured Stripe client. Nothing outside `billing/` imports `stripe`."""

from __future__ import annotations

from functools import lru_cache

import stripe

from subscription_app.settings import Settings, get_settings

# Seconds to wait for Stripe before giving up on one attempt (the SDK retries on top).
STRIPE_TIMEOUT_SECONDS = 20
STRIPE_MAX_NETWORK_RETRIES = 2


class StripeNotConfigured(RuntimeError):
    """Raised when code needs Stripe but no STRIPE_SECRET_KEY is set."""


def build_client(settings: Settings) -> stripe.StripeClient:
    """A `StripeClient` for these settings: real Stripe, or the emulator at STRIPE_API_BASE."""
    if settings.stripe_secret_key is None:
        raise StripeNotConfigured(
            "STRIPE_SECRET_KEY is not set. Run `make run` (it starts the local Stripe "
            "emulator) or set your Stripe test keys; see README."
        )
    base_addresses = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
    return stripe.StripeClient(
        settings.stripe_secret_key.get_secret_value(),
        base_addresses=base_addresses,
        max_network_retries=STRIPE_MAX_NETWORK_RETRIES,
        http_client=stripe.RequestsClient(timeout=STRIPE_TIMEOUT_SECONDS),
    )


@lru_cache(maxsize=1)
def get_client() -> stripe.StripeClient:
    """The process-wide Stripe client (pinned to the SDK's API version)."""
    return build_client(get_settings())
