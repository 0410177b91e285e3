"""Billing: the only package that talks to Stripe."""
