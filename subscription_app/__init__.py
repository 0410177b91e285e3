"""Subscription billing app (Reflex + Stripe)."""
