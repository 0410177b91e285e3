"""Webhook events.

localstripe keeps the webhook endpoints (``POST /_config/webhooks/{id}``),
signs each event with the endpoint's secret (``Stripe-Signature``) and POSTs it
about a second after it was scheduled. This module holds what we add: the
events our handlers schedule (with ``previous_attributes`` for ``*.updated``),
the API version every event is labelled with, and :func:`register_webhook` to
register an endpoint from a test or dev script.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
from localstripe import resources as ls

# The API version stripe-python 16.1.0 pins. Only used to label webhook
# events: the emulator accepts (and ignores) whatever Stripe-Version is sent.
API_VERSION = "2026-10-28.endive"


def _schedule_event(event_type: str, obj: ls.StripeObject, previous=None) -> None:
    event = ls.Event(event_type, obj)
    if previous:
        event.data["previous_attributes"] = previous
    ls.schedule_webhook(event)


def _changed_fields(before: dict, after: dict) -> dict:
    return {k: v for k, v in before.items() if after.get(k) != v}


_orig_event_init = ls.Event.__init__


def _event_init(self, type, data):
    _orig_event_init(self, type, data)
    self.api_version = API_VERSION


def register_webhook(
    api_base: str,
    url: str,
    secret: str,
    endpoint_id: str = "subscription_app",
    *,
    events: Sequence[str] | None = None,
) -> None:
    """Make the emulator POST signed events to ``url`` (all types by default).

    ``secret`` is the signing secret the app verifies ``Stripe-Signature``
    with (``whsec_...``). Registering the same ``endpoint_id`` again replaces
    the previous registration. Events are sent about a second after they
    happen.
    """
    form: dict[str, Any] = {"url": url, "secret": secret}
    if events is not None:
        form["events[]"] = list(events)
    response = httpx.post(
        f"{api_base.rstrip('/')}/_config/webhooks/{endpoint_id}", data=form, timeout=10
    )
    response.raise_for_status()
