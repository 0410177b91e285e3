"""``Idempotency-Key`` on POSTs (localstripe ignores it): a cache and its middleware."""

from __future__ import annotations

import asyncio
import collections
import hashlib

from aiohttp import web

from devtools.stripe_emulator.common import UserError


class _IdempotencyCache:
    """Replays the first response to a POST for any later POST with its key.

    Like Stripe, keys are global (not per path): reusing a key for a different
    request (other path or parameters) is an ``idempotency_error``. Successful
    responses and card declines (402) are stored; validation errors and
    server errors are not, so the client may retry them.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self._max_entries = max_entries
        # localstripe handlers are synchronous once the body is read, but a
        # lock keeps two concurrent retries from both running the handler.
        self._lock = asyncio.Lock()

    def clear(self) -> None:
        self._entries.clear()

    async def handle(self, request: web.Request, handler) -> web.StreamResponse:
        key = request.headers["Idempotency-Key"]
        body = await request.read()
        fingerprint = hashlib.sha256(
            b"\0".join(
                [request.method.encode(), request.path_qs.encode(), body],
            )
        ).hexdigest()
        async with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                cached_fingerprint, status, payload, content_type = cached
                if cached_fingerprint != fingerprint:
                    error = UserError(
                        400,
                        "Keys for idempotent requests can only be used with the "
                        "same parameters they were first used with. Try using a "
                        f"key other than '{key}' if you meant to execute a "
                        "different request.",
                    )
                    error.body["error"]["type"] = "idempotency_error"
                    raise error
                return web.Response(
                    status=status,
                    body=payload,
                    content_type=content_type,
                    headers={"Idempotency-Key": key, "Idempotent-Replayed": "true"},
                )
            try:
                response = await handler(request)
            except UserError as e:
                response = e.to_response()
            if (
                isinstance(response, web.Response)
                and isinstance(response.body, bytes)
                and (200 <= response.status < 300 or response.status == 402)
            ):
                self._entries[key] = (
                    fingerprint,
                    response.status,
                    response.body,
                    response.content_type,
                )
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
            response.headers["Idempotency-Key"] = key
            return response


_idempotency = _IdempotencyCache()


@web.middleware
async def _idempotency_middleware(request: web.Request, handler):
    if request.method == "POST" and request.headers.get("Idempotency-Key"):
        return await _idempotency.handle(request, handler)
    return await handler(request)
