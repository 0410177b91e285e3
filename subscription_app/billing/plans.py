"""The plan we sell. One default plan: $12.00 a month."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """What the plan page shows and what the Stripe price must match."""

    name: str
    amount_cents: int
    currency: str
    interval: str
    features: tuple[str, ...]

    @property
    def price_label(self) -> str:
        """E.g. "$12.00 / month"."""
        return f"${self.amount_cents / 100:.2f} / {self.interval}"


DEFAULT_PLAN = Plan(
    name="Pro",
    amount_cents=1200,
    currency="usd",
    interval="month",
    features=(
        "Unlimited projects",
        "Priority email support",
        "Cancel any time from your dashboard",
    ),
)
