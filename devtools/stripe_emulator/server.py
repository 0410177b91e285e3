"""The emulator's server: patching localstripe, its aiohttp app, CLI and process helpers.

:func:`install` applies every patch of this package to localstripe and adds our
middlewares; :func:`main` serves it (``python -m devtools.stripe_emulator``).
Tests and dev scripts run it as a subprocess with :func:`start_in_background`
(an :class:`EmulatorProcess`), empty it with :func:`reset` and hold webhook
deliveries back with :func:`hold_webhooks`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import httpx
from aiohttp import web
from localstripe import resources as ls

# Importing a module registers its routes (@_route). install() needs nothing else from
# these, so they are imported for their routes alone.
import devtools.stripe_emulator.checkout
import devtools.stripe_emulator.portal
import devtools.stripe_emulator.prices  # noqa: F401
from devtools.stripe_emulator.cards import (
    _canonical_pm,
    _customer_delete,
    _customer_update,
    _pm_api_attach,
    _pm_charging_is_declined,
    _pm_create,
    _pm_list,
    _pm_requires_authentication,
    _seti_attach_pm,
    _token_retrieve,
)
from devtools.stripe_emulator.common import (
    UserError,
    _auth_middleware,
    _extensions_middleware,
    _PublicUrl,
    _route,
    ls_server,
)
from devtools.stripe_emulator.errors import _retrieve, _user_error_init
from devtools.stripe_emulator.idempotency import _idempotency, _idempotency_middleware
from devtools.stripe_emulator.index import install as _install_index
from devtools.stripe_emulator.index import scoped_to_customer
from devtools.stripe_emulator.intents import (
    _payment_intent_create,
    _setup_intent_create,
    _setup_intent_list,
)
from devtools.stripe_emulator.invoices import (
    _draft_property,
    _invoice_finalize,
    _invoice_hosted_url,
    _invoice_list,
    _invoice_pdf_url,
)
from devtools.stripe_emulator.persistence import (
    DEFAULT_STATE_FILE,
    _load_state,
    _mark_dirty,
    _Persistence,
    persistence_ctx,
)
from devtools.stripe_emulator.renewals import _item_current_period
from devtools.stripe_emulator.subscriptions import (
    _invoice_amount_remaining,
    _invoice_confirmation_secret,
    _invoice_payment_success,
    _invoice_payments,
    _item_period_end,
    _item_period_start,
    _item_price,
    _line_pricing,
    _pay_invoice,
    _subscription_create,
    _subscription_currency,
    _subscription_delete,
    _subscription_initial_failure_later,
    _subscription_initial_success,
    _subscription_list,
    _subscription_update,
)
from devtools.stripe_emulator.webhooks import (
    _clear_hold,
    _event_init,
    _event_list,
    _schedule_webhook,
)

DEFAULT_PORT = 8420


# --------------------------------------------------------------------------
# Routes: reset, and which server this is
# --------------------------------------------------------------------------


@_route("DELETE", "/_config/data")
async def _reset_route(request: web.Request) -> web.Response:
    ls.store.clear()
    _idempotency.clear()
    _clear_hold()
    return web.Response()


@_route("GET", "/_config/emulator")
async def _about_route(request: web.Request) -> web.Response:
    # Lets start_in_background tell our server from whatever else holds a port.
    return web.json_response({"emulator": "subscription_app", "pid": os.getpid()})


# --------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------

_installed = False


def install(
    state_file: str | os.PathLike | None = DEFAULT_STATE_FILE,
    public_url: str | None = None,
) -> web.Application:
    """Patch localstripe in this process and return its aiohttp application.

    Idempotent. ``state_file`` is where the store is persisted, in the
    background shortly after each change and on a clean stop (see
    :mod:`devtools.stripe_emulator.persistence`; ``None`` keeps everything in
    memory); it replaces localstripe's
    hard-coded ``/tmp/localstripe.pickle`` so a test emulator never clobbers a
    developer's running one. ``public_url`` is where browsers reach the
    emulator's pages (Checkout, portal, invoices); by default each link is
    built from the address its request was sent to.
    """
    global _installed
    _Persistence.path = None if state_file is None else os.fspath(state_file)
    _PublicUrl.configured = public_url
    if _installed:
        return ls_server.app
    _installed = True

    UserError.__init__ = _user_error_init
    ls.StripeObject._api_retrieve = classmethod(_retrieve)
    ls.Store.try_load_from_disk = _load_state
    # Every localstripe save (after each write) only marks the store dirty;
    # persistence_ctx saves it in the background and on shutdown.
    ls.Store.dump_to_disk = _mark_dirty
    ls_server.app.cleanup_ctx.append(persistence_ctx)
    ls.Event.__init__ = _event_init
    ls.Event._api_list_all = classmethod(_event_list)
    # resources.py calls schedule_webhook through its module global.
    ls.schedule_webhook = _schedule_webhook

    ls.Token._api_retrieve = classmethod(_token_retrieve)
    ls.PaymentMethod._try_get_canonical_test_article = classmethod(_canonical_pm)
    ls.PaymentMethod._api_create = classmethod(_pm_create)
    ls.PaymentMethod._api_attach = classmethod(_pm_api_attach)
    ls.PaymentMethod._requires_authentication = _pm_requires_authentication
    ls.PaymentMethod._charging_is_declined = _pm_charging_is_declined
    ls.SetupIntent._attach_pm = _seti_attach_pm
    ls.PaymentMethod._api_list_all = classmethod(_pm_list)
    ls.Customer._api_update = classmethod(_customer_update)
    ls.Customer._api_delete = classmethod(_customer_delete)
    ls.SetupIntent._api_create = classmethod(_setup_intent_create)
    ls.SetupIntent._api_list_all = classmethod(scoped_to_customer(_setup_intent_list))
    ls.SetupIntent.last_setup_error = None
    ls.SetupIntent.description = None
    ls.PaymentIntent._api_create = classmethod(_payment_intent_create)
    ls.PaymentIntent.payment_method_types = ("card",)

    ls.Subscription._api_create = classmethod(_subscription_create)
    ls.Subscription._api_update = classmethod(_subscription_update)
    ls.Subscription._api_delete = classmethod(_subscription_delete)
    ls.Subscription._api_list_all = classmethod(_subscription_list)
    ls.Subscription._on_initial_payment_success = _subscription_initial_success
    ls.Subscription._on_initial_payment_failure_later = _subscription_initial_failure_later
    ls.Subscription.cancellation_details = {
        "comment": None,
        "feedback": None,
        "reason": None,
    }
    ls.Subscription.collection_method = "charge_automatically"
    ls.Subscription.currency = property(_subscription_currency)
    ls.Subscription.default_payment_method = None
    ls.Subscription.description = None
    ls.Subscription.pending_setup_intent = None
    # A class default, so subscriptions from older state files load as-is.
    ls.Subscription._renewals = 0
    ls.SubscriptionItem.price = property(_item_price)
    ls.SubscriptionItem.current_period_start = property(_item_period_start)
    ls.SubscriptionItem.current_period_end = property(_item_period_end)
    ls.SubscriptionItem._current_period = _item_current_period

    ls.Invoice._api_pay_invoice = classmethod(_pay_invoice)
    ls.Invoice._on_payment_success = _invoice_payment_success
    ls.Invoice.confirmation_secret = property(_invoice_confirmation_secret)
    ls.Invoice.payments = property(_invoice_payments)
    ls.Invoice.amount_remaining = property(_invoice_amount_remaining)
    ls.Invoice._api_list_all = classmethod(_invoice_list)
    ls.Invoice._draft = _draft_property
    ls.Invoice._finalize = _invoice_finalize
    ls.Invoice.number = None
    ls.Invoice.hosted_invoice_url = property(_invoice_hosted_url)
    ls.Invoice.invoice_pdf = property(_invoice_pdf_url)
    ls.InvoiceLineItem.pricing = property(_line_pricing)

    # Last: it wraps the lists installed above. The store indexes its objects by type
    # and customer, so no list (or lookup) scans the whole store any more.
    _install_index()

    # localstripe's chain is [errors, auth, save-store]. Idempotency goes
    # after auth (unauthenticated requests are never cached); our routes go
    # innermost so the save-store middleware persists what they change.
    middlewares = ls_server.app.middlewares
    auth = middlewares.index(ls_server.auth_middleware)
    # The same key check, except for the pages browsers open (Checkout, portal...).
    middlewares[auth] = _auth_middleware
    middlewares.insert(auth + 1, _idempotency_middleware)
    middlewares.append(_extensions_middleware)
    return ls_server.app


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.stripe_emulator",
        description="Local Stripe emulator (localstripe + today's API).",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="do not load the state saved by a previous run",
    )
    parser.add_argument(
        "--state-file",
        default=DEFAULT_STATE_FILE,
        help="where the state is saved, within a second of each change and on exit "
        "(default: %(default)s)",
    )
    parser.add_argument("--no-persist", action="store_true", help="keep the state in memory only")
    parser.add_argument(
        "--public-url",
        help="where browsers reach the emulator's pages, e.g. http://localhost:8420 "
        "(default: the address each request was sent to)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point: serve the emulator until SIGINT/SIGTERM."""
    # Shells start background jobs with SIGINT ignored, and Python keeps it
    # that way; restore it so a Ctrl-C/SIGINT during startup also stops us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT before aiohttp took over
        _serve(_parse_args(argv))


def _serve(args: argparse.Namespace) -> None:
    app = install(None if args.no_persist else args.state_file, args.public_url)
    _PublicUrl.fallback = f"http://{args.host}:{args.port}"
    if not args.from_scratch:
        ls.store.try_load_from_disk()

    # Same logging as localstripe's own start(); that function cannot be
    # reused as is because it parses sys.argv itself and always binds "::".
    access_log = logging.getLogger("aiohttp.access")
    access_log.setLevel(logging.DEBUG)
    access_log.addHandler(logging.StreamHandler())

    # run_app turns SIGINT and SIGTERM into a graceful shutdown (exit 0), whose
    # cleanup saves the state (persistence_ctx); a short timeout so a lingering
    # keep-alive connection cannot stall it.
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=access_log,
        shutdown_timeout=5,
    )


# --------------------------------------------------------------------------
# Helpers for tests and dev scripts
# --------------------------------------------------------------------------

# devtools/stripe_emulator/server.py -> the repository root.
_REPO_ROOT = Path(__file__).resolve().parents[2]


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmulatorProcess:
    """A running ``python -m devtools.stripe_emulator`` subprocess.

    ``url`` is the API base for ``StripeClient(base_addresses={"api": url})``
    and ``js_url`` the fake Stripe.js to load instead of js.stripe.com.
    Usable as a context manager; the process is also stopped at interpreter
    exit if nobody did.
    """

    def __init__(self, process: subprocess.Popen, host: str, port: int, log_path: Path) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.log_path = log_path
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{url_host}:{port}"
        self.js_url = f"{self.url}/js.stripe.com/v3/"
        self._finalizer = weakref.finalize(self, _terminate, process)

    def logs(self) -> str:
        """The emulator's output so far (access log, errors)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        """Send SIGTERM, wait for a clean exit (SIGKILL after ``timeout``).

        A clean exit saves the whole state first (with a state file). Returns
        the exit code: 0 when it shut down gracefully.
        """
        self._finalizer.detach()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmulatorProcess(url={self.url!r}, pid={self.process.pid})"


def start_in_background(
    port: int,
    host: str = "127.0.0.1",
    *,
    state_file: str | os.PathLike | None = None,
    startup_timeout: float = 30.0,
) -> EmulatorProcess:
    """Start the emulator as a subprocess and wait until it serves requests.

    With ``state_file=None`` (the default) the emulator starts empty and keeps
    its state in memory only, which is what tests want; with a path it loads
    that state and saves changes to it (within about a second, and all of them
    when stopped with :meth:`EmulatorProcess.stop`).

    Raises ``RuntimeError`` (with the emulator's output) if it exits or does
    not answer within ``startup_timeout`` seconds.
    """
    fd, log_name = tempfile.mkstemp(prefix="stripe-emulator-", suffix=".log")
    log_path = Path(log_name)
    command = [
        sys.executable,
        "-m",
        "devtools.stripe_emulator",
        "--port",
        str(port),
        "--host",
        host,
    ]
    if state_file is None:
        command += ["--from-scratch", "--no-persist"]
    else:
        command += ["--state-file", os.fspath(state_file)]
    with os.fdopen(fd, "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=_REPO_ROOT,  # so "-m devtools..." resolves whatever our cwd is
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    emulator = EmulatorProcess(process, host, port, log_path)

    deadline = time.monotonic() + startup_timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process.poll() is not None:
                output = emulator.logs()
                emulator.stop()
                raise RuntimeError(
                    f"Stripe emulator exited with code {process.returncode}:\n{output}"
                )
            try:
                about = client.get(f"{emulator.url}/_config/emulator")
                if about.status_code == 200 and about.json().get("pid") == process.pid:
                    return emulator
            except (httpx.TransportError, ValueError):
                pass
            if time.monotonic() > deadline:
                output = emulator.logs()
                emulator.stop()
                raise RuntimeError(
                    f"Stripe emulator did not answer on {emulator.url} within "
                    f"{startup_timeout}s:\n{output}"
                )
            time.sleep(0.05)  # poll interval, bounded by the deadline above


def reset(api_base: str) -> None:
    """Delete all Stripe objects in the emulator (webhooks stay registered).

    Also stops holding webhook deliveries and forgets the held events.
    """
    response = httpx.delete(f"{api_base.rstrip('/')}/_config/data", timeout=10)
    response.raise_for_status()


def hold_webhooks(url: str, hold: bool, drop: bool = False) -> dict:
    """Hold webhook deliveries back (``hold=True``) or release them (``hold=False``).

    While held, events are still created (``GET /v1/events`` lists them) but
    not sent. Releasing sends the held events in the order they happened, one
    after the other, and returns once they were all sent; with ``drop=True``
    they are discarded instead. :func:`reset` also ends a hold, dropping the
    held events. ``url`` is the emulator's base URL.

    Returns the emulator's answer: ``{"hold": True, "held": n}`` when holding,
    ``{"hold": False, "released": n, "dropped": m, ...}`` when releasing.
    """
    response = httpx.post(
        f"{url.rstrip('/')}/_config/webhooks/hold",
        json={"hold": hold, "drop": drop},
        timeout=60,
    )
    response.raise_for_status()
    return response.json()
