"""The FastAPI application behind `/api/v1`, with errors every client can read."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from subscription_app import routes
from subscription_app.api import auth, health, subscriptions, webhooks
from subscription_app.errors import AppError, ErrorKind

API_PREFIX = routes.API_PREFIX
logger = logging.getLogger(__name__)

# The one translation of an error kind into an HTTP status (see `errors.ErrorKind`).
STATUS_FOR_KIND: dict[ErrorKind, int] = {
    "invalid": status.HTTP_422_UNPROCESSABLE_CONTENT,
    "unauthorized": status.HTTP_401_UNAUTHORIZED,
    "forbidden": status.HTTP_403_FORBIDDEN,
    "conflict": status.HTTP_409_CONFLICT,
    "card": status.HTTP_402_PAYMENT_REQUIRED,
    "limited": status.HTTP_429_TOO_MANY_REQUESTS,
    # Stripe unreachable, timing out or not set up: a service the request depends on failed
    # (the client may retry; a retry never charges twice).
    "unavailable": status.HTTP_424_FAILED_DEPENDENCY,
    "busy": status.HTTP_503_SERVICE_UNAVAILABLE,
}


def _describe(error: dict) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    message = error.get("msg", "invalid value")
    return f"{location}: {message}" if location else message


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # registered for this class only
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return JSONResponse(
            {"detail": "The request body is not valid JSON."},
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    readable = "; ".join(_describe(error) for error in errors) or "Invalid request."
    fields = [{"field": _describe(e).split(":")[0], "message": e.get("msg", "")} for e in errors]
    return JSONResponse(
        {"detail": f"Invalid request: {readable}", "errors": fields},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # registered for this class only
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    """Every refusal a service raises (`AppError`), answered with its status and message."""
    assert isinstance(exc, AppError)  # registered for AppError only
    headers: dict[str, str] = {}
    if exc.retry_after:
        headers["Retry-After"] = str(exc.retry_after)
    if exc.kind == "unauthorized":
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        {"detail": exc.message}, status_code=STATUS_FOR_KIND[exc.kind], headers=headers
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Never leak a stack trace or a secret to the client; the log has the details.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        {"detail": "Something went wrong on our side. Please try again."},
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )


def create_api() -> FastAPI:
    """Build the FastAPI app with every `/api/v1` route."""
    api = FastAPI(
        title="Subscription app API",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(AppError, _app_error)
    api.add_exception_handler(Exception, _unexpected_error)
    api.include_router(health.router, prefix=API_PREFIX)
    api.include_router(auth.router, prefix=API_PREFIX)
    api.include_router(subscriptions.router, prefix=API_PREFIX)
    api.include_router(webhooks.router, prefix=API_PREFIX)

    # Last: any other path under /api/v1 is a JSON 404 (not the HTML app page, and not a 405
    # from a neighbouring route's method list).
    @api.api_route(
        f"{API_PREFIX}/{{path:path}}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )
    async def unknown_api_path(path: str) -> JSONResponse:
        return JSONResponse(
            {"detail": f"No such API endpoint: {API_PREFIX}/{path}"[:300]},
            status_code=status.HTTP_404_NOT_FOUND,
        )

    return api
