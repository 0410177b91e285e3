"""Helpers for the billing unit tests: users, subscription snapshots, a settable clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from subscription_app.billing.reader import SubscriptionSnapshot
from subscription_app.models import User, utcnow

START = datetime(2025, 11, 22, 9, 30, tzinfo=UTC)
PERIOD_END = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


@pytest.fixture
def make_user(session) -> Callable[..., User]:
    """Register (and commit) a user; `make_user("a@example.com")`."""
    from subscription_app import accounts

    def _make(email: str = "someone@example.com") -> User:
        user = accounts.register_user(session=session, email=email, password="s3cret-pass")
        session.commit()
        session.refresh(user)
        return user

    return _make


@pytest.fixture
def make_snapshot() -> Callable[..., SubscriptionSnapshot]:
    """A subscription as Stripe would report it; keyword arguments override fields."""
    base = SubscriptionSnapshot(
        id="sub_1TestAbc",
        customer_id="cus_1TestAbc",
        status="active",
        price_id="price_1TestAbc",
        started_at=START,
        current_period_end=PERIOD_END,
        cancel_at_period_end=False,
        canceled_at=None,
        ended_at=None,
        cancel_at=None,
        latest_invoice_id=None,
        payment=None,
    )

    def _make(**changes) -> SubscriptionSnapshot:
        return replace(base, **changes)

    return _make


class Clock:
    """A clock the test moves by hand (no sleeping)."""

    def __init__(self) -> None:
        # Whole microseconds from now: stored and read back unchanged on both databases.
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A `Clock`; patch it in with `monkeypatch.setattr(module, "utcnow", clock)`."""
    return Clock()


@pytest.fixture
def no_stripe(monkeypatch) -> None:
    """Fail the test if anything asks for the Stripe client."""
    from subscription_app.billing import catalog, client, service, sync

    def _refuse(*_args, **_kwargs):
        pytest.fail("the Stripe client was asked for")

    for module in (catalog, client, service, sync):
        monkeypatch.setattr(module, "get_client", _refuse)
