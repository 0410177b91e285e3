"""Shared FastAPI dependencies: database session and the authenticated user."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from subscription_app import accounts
from subscription_app.db import session_scope
from subscription_app.models import User
from subscription_app.security import allowed_origins, forwarded_client, header_list
from subscription_app.settings import get_settings

_bearer = HTTPBearer(auto_error=False)


def get_session() -> Iterator[Session]:
    """One database session per request, committed when the route returns normally."""
    with session_scope() as session:
        yield session


# scope="function": the session commits (or fails) before the response is sent. FastAPI's
# default for a `yield` dependency ends it after the response, which would answer 200 for a
# write that is not committed yet, or never is.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The bearer token of the request, or a 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="Authentication required: send 'Authorization: Bearer <token>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.credentials


def get_current_user(session: SessionDep, token: Annotated[str, Depends(get_token)]) -> User:
    """The user behind the bearer token, or a 401 if it is invalid, expired or revoked."""
    user = accounts.user_for_token(session=session, token=token)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="Invalid or expired token. Log in again.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def client_address(request: Request) -> str | None:
    """The client's IP: the connection's, or the rightmost untrusted hop behind our proxies."""
    peer = request.client.host if request.client else None
    return forwarded_client(peer, header_list(request.scope, "x-forwarded-for"), get_settings())


def from_our_pages(request: Request) -> None:
    """Refuse (403) a browser's request that our own pages did not send.

    For the cookie endpoints: another site, or a sibling subdomain (same-site, so SameSite
    does not stop it), must not post to them with the person's cookie attached. A browser's
    POST names its page's origin (`Origin`), which must be the app's own (as CORS allows;
    our pages may be served from another port than the backend's). Without it, the
    browser's `Sec-Fetch-Site` must say same-origin; a client that is not a browser sends
    neither and is not refused.
    """
    origin = request.headers.get("origin")
    if origin is not None:
        ours = origin in allowed_origins(get_settings())
    else:
        ours = request.headers.get("sec-fetch-site") in (None, "same-origin", "none")
    if not ours:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="This request must come from the app's own pages."
        )
