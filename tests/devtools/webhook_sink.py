"""A local HTTP endpoint that receives the emulator's webhooks, for tests."""

from __future__ import annotations

import contextlib
import http.server
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import stripe

from devtools.stripe_emulator import EmulatorProcess, register_webhook


class _Sink(http.server.BaseHTTPRequestHandler):
    received: queue.Queue

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.put((body, self.headers.get("Stripe-Signature")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@dataclass
class Receiver:
    """Events that verified with our secret, in the order they arrived."""

    received: queue.Queue
    secret: str
    seen: list[stripe.Event] = field(default_factory=list)

    def collect(self, seconds: float) -> list[stripe.Event]:
        """Take in what arrives during ``seconds``; returns everything seen so far."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                body, signature = self.received.get(timeout=remaining)
            except queue.Empty:
                break
            # Endpoints registered by earlier tests stay registered with the module's
            # emulator: only events signed with our secret are ours.
            with contextlib.suppress(stripe.SignatureVerificationError):
                self.seen.append(stripe.Webhook.construct_event(body, signature, self.secret))
        return self.seen

    def wait(self, predicate: Callable[[stripe.Event], bool], timeout: float = 10) -> stripe.Event:
        """The first event matching ``predicate``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.seen:
                if predicate(event):
                    return event
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no matching event among {[e.type for e in self.seen]}"
            self.collect(min(remaining, 0.2))


@contextlib.contextmanager
def webhook_receiver(
    emulator: EmulatorProcess, events: list[str] | None = None
) -> Iterator[Receiver]:
    """Register a local endpoint for ``events`` (all types if None) while inside."""
    received: queue.Queue = queue.Queue()
    handler = type("Sink", (_Sink,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    secret = "whsec_test_" + uuid.uuid4().hex
    register_webhook(
        emulator.url,
        f"http://127.0.0.1:{server.server_address[1]}/stripe/webhook",
        secret,
        endpoint_id="test_" + uuid.uuid4().hex[:10],
        events=events,
    )
    try:
        yield Receiver(received, secret)
    finally:
        server.shutdown()
        server.server_close()
