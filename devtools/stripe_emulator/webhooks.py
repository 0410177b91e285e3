"""Webhook events.

localstripe keeps the webhook endpoints (``POST /_config/webhooks/{id}``),
signs each event with the endpoint's secret (``Stripe-Signature``) and POSTs it
about a second after it was scheduled. This module holds what we add: the
events our handlers schedule (with ``previous_attributes`` for ``*.updated``),
the API version every event is labelled with, :func:`register_webhook` to
register an endpoint from a test or dev script, ``GET /v1/events`` newest first
(as Stripe lists them), and holding deliveries back
(``POST /_config/webhooks/hold``, see :func:`devtools.stripe_emulator.hold_webhooks`):
while held, events are still created (and listed) but not sent; released, the
held ones are sent one after the other, in the order they happened.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from localstripe import resources as ls
from localstripe import webhooks as ls_webhooks

from devtools.stripe_emulator.common import (
    _as_bool,
    _invalid,
    _reject_unknown,
    _request_data,
    _route,
)

# The API version stripe-python 16.1.0 pins. Only used to label webhook
# events: the emulator accepts (and ignores) whatever Stripe-Version is sent.
API_VERSION = "2026-10-28.endive"

log = logging.getLogger("aiohttp.access")  # where localstripe logs its deliveries


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


_orig_event_list = ls.Event._api_list_all.__func__


def _event_list(cls, url, **kwargs):
    result = _orig_event_list(cls, url, **kwargs)
    # Stripe lists newest first; the store keeps insertion (creation) order.
    result._list.reverse()
    return result


# --------------------------------------------------------------------------
# Holding deliveries back
# --------------------------------------------------------------------------


class _Hold:
    active = False
    events: list[ls.Event] = []


_orig_schedule_webhook = ls_webhooks.schedule_webhook


def _schedule_webhook(event: ls.Event) -> None:
    """Replaces localstripe's ``schedule_webhook``: keeps the event while held."""
    if _Hold.active:
        _Hold.events.append(event)
    else:
        _orig_schedule_webhook(event)


def _clear_hold() -> int:
    """Stop holding and forget the held events (``reset``); returns how many."""
    dropped = len(_Hold.events)
    _Hold.active = False
    _Hold.events = []
    return dropped


async def _deliver_in_order(events: list[ls.Event]) -> int:
    """POST each event to every endpoint that wants it, one after the other.

    Signed like Stripe does, with the time of delivery (a held event may be
    older than the receiver's signature tolerance). Returns the number of
    successful deliveries.
    """
    delivered = 0
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for event in events:
            payload = json.dumps(event._export(), indent=2, sort_keys=True).encode()
            for endpoint in list(ls_webhooks._webhooks.values()):
                if endpoint.events is not None and event.type not in endpoint.events:
                    continue
                timestamp = int(time.time())
                signature = hmac.new(
                    endpoint.secret.encode(), b"%d.%s" % (timestamp, payload), hashlib.sha256
                ).hexdigest()
                headers = {
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": f"t={timestamp},v1={signature}",
                }
                try:
                    async with http.post(endpoint.url, data=payload, headers=headers) as response:
                        ok = 200 <= response.status < 300
                        delivered += ok
                        log.info(
                            'held webhook "%s" %s (%d)',
                            event.type,
                            "delivered" if ok else "refused",
                            response.status,
                        )
                except (TimeoutError, aiohttp.ClientError) as e:
                    log.info('held webhook "%s" failed: %s', event.type, e)
    return delivered


@_route("GET", "/_config/webhooks/hold")
async def _hold_state_route(request: web.Request) -> web.Response:
    return web.json_response({"hold": _Hold.active, "held": len(_Hold.events)})


@_route("POST", "/_config/webhooks/hold")
async def _hold_route(request: web.Request) -> web.Response:
    data = await _request_data(request)
    _reject_unknown(data, {"hold", "drop"})
    hold = _as_bool(data.get("hold"), "hold")
    if hold is None:
        raise _invalid("Missing required param: hold.", "hold", "parameter_missing")
    drop = bool(_as_bool(data.get("drop"), "drop"))
    if hold:
        _Hold.active = True
        return web.json_response({"hold": True, "held": len(_Hold.events)})
    held = _Hold.events
    _clear_hold()
    if drop:
        return web.json_response({"hold": False, "released": 0, "dropped": len(held)})
    # Answered once every held event was sent, so a caller knows they arrived.
    delivered = await _deliver_in_order(held)
    return web.json_response(
        {"hold": False, "released": len(held), "dropped": 0, "deliveries": delivered}
    )


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
