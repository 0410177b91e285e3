"""The baseline of `benchmarks/webhooks.py`: a webhook endpoint that only checks the signature.

    STRIPE_WEBHOOK_SECRET=whsec_... python -m granian --interface asgi --workers N \\
        --host 127.0.0.1 --port P benchmarks.bare_webhook:app

A plain ASGI app, no framework and no middleware: `POST /api/v1/webhooks/stripe` runs
`stripe.WebhookSignature.verify_header` on the body (the Stripe SDK's scheme, five minutes'
tolerance, as the app's route does) and answers 200 `{"received": true}`, or 400 when the
signature does not check out. Any other request is a 404. Nothing is parsed or stored: what
the real route does beyond this is what the benchmark's ratio measures.
"""

from __future__ import annotations

import os

import stripe

PATH = "/api/v1/webhooks/stripe"
SIGNATURE_TOLERANCE_SECONDS = 300
MAX_BODY_BYTES = 1024 * 1024
_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
_JSON = [(b"content-type", b"application/json")]


async def _answer(send, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    """The ASGI entry point."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if scope["method"] != "POST" or scope["path"] != PATH:
        await _answer(send, 404, b'{"detail": "Not found."}')
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_BODY_BYTES:
            await _answer(send, 413, b'{"detail": "Payload too large."}')
            return
    signature = dict(scope["headers"]).get(b"stripe-signature", b"").decode("latin-1")
    try:
        stripe.WebhookSignature.verify_header(
            body.decode("utf-8"), signature, _SECRET, SIGNATURE_TOLERANCE_SECONDS
        )
    except (stripe.SignatureVerificationError, ValueError, IndexError):
        # ValueError: a body that is not UTF-8, or a malformed header.
        await _answer(send, 400, b'{"detail": "Invalid Stripe-Signature."}')
        return
    await _answer(send, 200, b'{"received": true}')
