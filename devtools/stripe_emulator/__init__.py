"""Local Stripe emulator: localstripe plus the parts of today's Stripe API we use.

Run it with::

    python -m devtools.stripe_emulator --port 8420 [--host 127.0.0.1] [--from-scratch]

and point the SDK at it with
``stripe.StripeClient("sk_test_...", base_addresses={"api": "http://127.0.0.1:8420"})``
and the browser at ``http://127.0.0.1:8420/js.stripe.com/v3/`` (fake Stripe.js).

localstripe (GPL-3.0) is imported and extended at run time: this package adds
routes and wraps its resource classes, it does not contain any of its code.
It is a development/test dependency only (``requirements-emulator.txt``), run as
a separate process; the app never imports it.
What is added on top of localstripe 1.15.10:

* the Prices API (``/v1/prices``), each price backed by a localstripe Plan
  with the same id so subscriptions work;
* ``POST /v1/subscriptions`` with ``items[][price]``, ``default_payment_method``,
  ``payment_behavior`` (all four values), ``payment_settings``, trials;
  ``cancel_at_period_end`` / cancel set ``cancel_at``, ``canceled_at`` and
  ``cancellation_details``; ``cancel_at`` on update (a timestamp, ``min_period_end``,
  or ``""`` to undo), which the customer portal uses as in flexible billing mode;
  ``customer.subscription.updated`` events;
* ``Idempotency-Key`` on POSTs (localstripe ignores it);
* confirming a SetupIntent attaches its payment method to its customer;
* confirming a PaymentIntent with ``payment_method`` (invoices of
  ``default_incomplete`` subscriptions);
* today's response fields: ``items.data[].price``,
  ``items.data[].current_period_start/end``, ``invoice.confirmation_secret``,
  ``invoice.payments``, ``invoice.lines.data[].pricing``;
* magic test tokens / payment methods (``tok_visa``, ``pm_card_chargeDeclined``...),
  ``payment_methods.create(card={"token": ...})``,
  ``GET /v1/customers/{id}/payment_methods``;
* Stripe-shaped errors (``card_error`` for 402, ``resource_missing`` for 404);
* renewals, like a Stripe test clock reaching the end of a period:
  ``POST /_config/subscriptions/{id}/renew`` (see :func:`renew_subscription`);
* Stripe Checkout in subscription mode (``/v1/checkout/sessions``) and its
  hosted payment page, with the test cards, declines and 3-D Secure;
* the customer portal (``POST /v1/billing_portal/sessions`` and its pages:
  cancel / don't cancel, update the card, invoice history);
* invoice numbers, hosted invoice pages and PDFs; ``GET /v1/invoices`` and
  ``GET /v1/events`` newest first;
* ``allowed_payment_method_types`` on SetupIntents and PaymentIntents;
* holding webhook deliveries back and releasing them in order
  (``POST /_config/webhooks/hold``, see :func:`hold_webhooks`);
* the store indexed by object type and customer, and saved in the background:
  a call costs the same with 10,000 customers stored as with 100.

The pages (``/checkout/...``, ``/billing/portal/...``, ``/invoice/...``) need no
API key; their links are built from the address each request was sent to
(``--public-url`` overrides it).

The helpers :func:`start_in_background`, :func:`register_webhook`,
:func:`renew_subscription`, :func:`hold_webhooks` and :func:`reset` drive an
emulator from tests and dev scripts.

Modules, lowest layer first (each imports only those above it):

* ``common``: localstripe's modules, small helpers, the route table for our
  endpoints and pages, the API key check that lets pages through, public URLs;
* ``index``: the store's index of objects by type and by customer, which every
  list uses instead of scanning the whole store;
* ``webhooks``: events we schedule, their API version, :func:`register_webhook`,
  the events list, holding deliveries;
* ``idempotency``: the ``Idempotency-Key`` cache and middleware;
* ``errors``: Stripe-shaped errors;
* ``persistence``: the state file;
* ``pages``: the HTML the pages share (layout, card form, 3-D Secure challenge);
* ``prices``: products and prices;
* ``cards``: test cards, PaymentMethods, specific declines, customers, cards
  typed into our pages;
* ``intents``: SetupIntents and PaymentIntents;
* ``subscriptions``: subscriptions, invoices and today's fields on them;
* ``invoices``: invoice numbers, hosted invoice pages, PDFs, the invoice list;
* ``renewals``: renewals and :func:`renew_subscription`;
* ``checkout``: Checkout Sessions and the hosted payment page;
* ``portal``: customer portal sessions and pages;
* ``server``: :func:`install`, the CLI (:func:`main`), :class:`EmulatorProcess`,
  :func:`start_in_background`, :func:`reset`, :func:`hold_webhooks`.
"""

from __future__ import annotations

from devtools.stripe_emulator.renewals import renew_subscription
from devtools.stripe_emulator.server import (
    DEFAULT_PORT,
    EmulatorProcess,
    hold_webhooks,
    install,
    main,
    reset,
    start_in_background,
)
from devtools.stripe_emulator.webhooks import API_VERSION, register_webhook

__all__ = [
    "API_VERSION",
    "DEFAULT_PORT",
    "EmulatorProcess",
    "hold_webhooks",
    "install",
    "main",
    "register_webhook",
    "renew_subscription",
    "reset",
    "start_in_background",
]
