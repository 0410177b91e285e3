"""`/api/v1/health`: liveness plus a database round trip."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from subscription_app import db

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> JSONResponse:
    """200 `{"status": "ok"}` when the app and its database answer, else 503."""
    try:
        with db.get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:  # any database failure means "not healthy", never a 500
        return JSONResponse({"status": "degraded", "database": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})
