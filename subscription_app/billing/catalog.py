"""The default plan's Stripe price: found by lookup key (or STRIPE_PRICE_ID), created locally."""

from __future__ import annotations

import threading
import time

import stripe

from subscription_app.billing.client import get_client
from subscription_app.billing.errors import NotSetUp
from subscription_app.billing.plans import DEFAULT_PLAN, Plan
from subscription_app.billing.reader import APP_METADATA
from subscription_app.settings import get_settings


class PriceNotFound(NotSetUp):
    """The configured price does not exist in the Stripe account.

    People see "payments are not set up" (424 in the API); the log says what to configure.
    """


def find_price_by_lookup_key(client: stripe.StripeClient, lookup_key: str) -> str | None:
    """The id of the active price with `lookup_key`, or None."""
    prices = client.v1.prices.list(params={"lookup_keys": [lookup_key], "active": True, "limit": 1})
    return prices.data[0].id if prices.data else None


def ensure_default_price(
    *,
    client: stripe.StripeClient | None = None,
    lookup_key: str | None = None,
    plan: Plan = DEFAULT_PLAN,
) -> str:
    """Find the default plan's price by lookup key, creating product and price if missing.

    Used to seed the local emulator (and a fresh Stripe test account); running it again finds
    the same price instead of making a second one.
    """
    client = client or get_client()
    lookup_key = lookup_key or get_settings().stripe_price_lookup_key
    existing = find_price_by_lookup_key(client, lookup_key)
    if existing:
        return existing
    product = client.v1.products.create(params={"name": plan.name, "metadata": APP_METADATA})
    price = client.v1.prices.create(
        params={
            "product": product.id,
            "unit_amount": plan.amount_cents,
            "currency": plan.currency,
            "recurring": {"interval": plan.interval},
            "lookup_key": lookup_key,
            "nickname": f"{plan.name} monthly",
        }
    )
    return price.id


def resolve_price_id(*, client: stripe.StripeClient | None = None) -> str:
    """The price to subscribe users to: STRIPE_PRICE_ID, else the lookup key's price.

    Raises:
        PriceNotFound: with a message naming what to configure.
    """
    settings = get_settings()
    if settings.stripe_price_id:
        return settings.stripe_price_id
    found = find_price_by_lookup_key(client or get_client(), settings.stripe_price_lookup_key)
    if not found:
        raise PriceNotFound(
            f"No active Stripe price has lookup key {settings.stripe_price_lookup_key!r}. "
            "Set STRIPE_PRICE_ID to your $12.00/month price, or give that price this lookup key."
        )
    return found


# Our price id, remembered for a few minutes: webhooks ask for it on every subscription event,
# and a lookup-key search is a Stripe call.
PRICE_CACHE_SECONDS = 300
_price_cache: dict[tuple, tuple[float, str]] = {}
_price_cache_lock = threading.Lock()


def default_price_id() -> str:
    """`resolve_price_id()`, remembered for `PRICE_CACHE_SECONDS` per configuration.

    Raises:
        PriceNotFound: as `resolve_price_id`.
    """
    settings = get_settings()
    key = (settings.stripe_api_base, settings.stripe_price_id, settings.stripe_price_lookup_key)
    now = time.monotonic()
    with _price_cache_lock:
        cached = _price_cache.get(key)
    if cached and now - cached[0] < PRICE_CACHE_SECONDS:
        return cached[1]
    price_id = resolve_price_id()
    with _price_cache_lock:
        _price_cache[key] = (now, price_id)
    return price_id


def forget_default_price() -> None:
    """Drop the remembered price id (tests that re-seed Stripe; a changed price)."""
    with _price_cache_lock:
        _price_cache.clear()
