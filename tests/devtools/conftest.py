"""Shared by the emulator's tests: one emulator subprocess per test module, a reader of its
HTML pages (forms by label, buttons and links by name), and a local webhook receiver."""

from __future__ import annotations

import contextlib
import html.parser
import http.server
import queue
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import stripe

from devtools.liveapp import free_port
from devtools.stripe_emulator import EmulatorProcess, register_webhook, start_in_background


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with start_in_background(free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def client(emulator: EmulatorProcess) -> stripe.StripeClient:
    # No retries: a failing request must fail the test, not be replayed.
    return stripe.StripeClient(
        "sk_test_12345",
        base_addresses={"api": emulator.url},
        max_network_retries=0,
    )


@dataclass
class Form:
    action: str
    method: str
    inputs: list[dict[str, str]] = field(default_factory=list)
    buttons: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Page:
    url: str
    status: int
    text: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # label text -> input id
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> attributes
    links: list[tuple[str, str]] = field(default_factory=list)  # (text, href)
    forms: list[Form] = field(default_factory=list)
    tags: set[str] = field(default_factory=set)

    def field(self, label: str) -> dict[str, str]:
        """The attributes of the input labelled ``label`` (exactly)."""
        assert label in self.labels, f"no field labelled {label!r} among {list(self.labels)}"
        return self.inputs[self.labels[label]]

    def link(self, name: str) -> str:
        """The href of the link named ``name`` (or starting with it, if ``name`` ends in ...)."""
        prefix = name.removesuffix("...")
        for text, href in self.links:
            if text == name or (name.endswith("...") and text.startswith(prefix)):
                return href
        raise AssertionError(f"no link {name!r} among {[t for t, _ in self.links]}")

    def buttons(self) -> list[str]:
        return [button["text"] for form in self.forms for button in form.buttons]

    def form_of(self, button: str) -> Form:
        for form in self.forms:
            if any(b["text"] == button for b in form.buttons):
                return form
        raise AssertionError(f"no button {button!r} among {self.buttons()}")


class _Reader(html.parser.HTMLParser):
    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self.text: list[str] = []
        self.skip = 0  # inside <style>, <script> or <title>
        self.form: Form | None = None
        # Text being gathered for an open <label>, <a> or <button>.
        self.open: list[tuple[str, dict[str, str], list[str]]] = []

    def handle_starttag(self, tag, attrs):
        attributes = {k: (v if v is not None else "") for k, v in attrs}
        self.page.tags.add(tag)
        if tag in ("style", "script", "title"):
            self.skip += 1
        elif tag == "form":
            self.form = Form(attributes.get("action", ""), attributes.get("method", "get").lower())
            self.page.forms.append(self.form)
        elif tag == "input":
            if "id" in attributes:
                self.page.inputs[attributes["id"]] = attributes
            if self.form is not None:
                self.form.inputs.append(attributes)
        elif tag in ("label", "a", "button"):
            self.open.append((tag, attributes, []))

    def handle_endtag(self, tag):
        if tag in ("style", "script", "title"):
            self.skip -= 1
        elif tag == "form":
            self.form = None
        elif tag in ("label", "a", "button") and self.open and self.open[-1][0] == tag:
            _, attributes, parts = self.open.pop()
            text = " ".join("".join(parts).split())
            if tag == "label":
                self.page.labels[text] = attributes.get("for", "")
            elif tag == "a":
                self.page.links.append((text, attributes.get("href", "")))
            elif self.form is not None:
                self.form.buttons.append({**attributes, "text": text})

    def handle_data(self, data):
        if self.skip:
            return
        self.text.append(data)
        for _, _, parts in self.open:
            parts.append(data)


def read_page(response: httpx.Response) -> Page:
    page = Page(url=str(response.url), status=response.status_code)
    reader = _Reader(page)
    reader.feed(response.text)
    page.text = " ".join(" ".join(reader.text).split())
    return page


def submit(
    http: httpx.Client, page: Page, button: str, fields: dict[str, str] | None = None
) -> httpx.Response:
    """Click ``button``: send its form with ``fields`` (label -> value) typed in.

    Inputs not typed into keep their value (a pre-filled email...). Redirects are
    not followed, so the caller sees the 303.
    """
    form = page.form_of(button)
    values = {i["name"]: i.get("value", "") for i in form.inputs if "name" in i}
    for label, value in (fields or {}).items():
        values[page.field(label)["name"]] = value
    clicked = next(b for b in form.buttons if b["text"] == button)
    if clicked.get("name"):
        values[clicked["name"]] = clicked.get("value", "")
    target = urllib.parse.urljoin(page.url, form.action or page.url)
    if form.method == "post":
        return http.post(target, data=values)
    return http.get(target, params=values)


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
