"""`/api/v1/auth`: register, log in (JWT bearer token), log out, who am I."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from subscription_app import accounts, session_cookie
from subscription_app.api.deps import (
    CurrentUser,
    SessionDep,
    client_address,
    from_our_pages,
    get_token,
)

router = APIRouter(prefix="/auth", tags=["auth"])


class Credentials(BaseModel):
    """Email and password, as sent by the client."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=1, max_length=accounts.EMAIL_MAX_LENGTH)
    password: str = Field(min_length=1, max_length=accounts.PASSWORD_MAX_LENGTH)


class UserOut(BaseModel):
    """A user as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    created_at: datetime


class TokenOut(BaseModel):
    """A bearer token."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=UserOut)
def register(body: Credentials, session: SessionDep, request: Request) -> UserOut:
    """Create an account. 409 if the email is taken, 422 if email or password is invalid.

    429 (with Retry-After) when too many attempts came for this email or from this address.
    """
    user = accounts.register(
        session=session,
        email=body.email,
        password=body.password,
        client_address=client_address(request),
    )
    return UserOut.model_validate(user)


@router.post("/login", response_model=TokenOut)
def login(body: Credentials, session: SessionDep, request: Request) -> TokenOut:
    """Exchange email and password for a bearer token (401 on any mismatch).

    429 (with Retry-After) after too many failures for the account or attempts from the address.
    """
    issued = accounts.login(
        session=session,
        email=body.email,
        password=body.password,
        client_address=client_address(request),
    )
    return TokenOut(access_token=issued.token, expires_in=issued.expires_in)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(
    session: SessionDep, user: CurrentUser, token: Annotated[str, Depends(get_token)]
) -> None:
    """Revoke the token used for this request."""
    accounts.revoke_token(session=session, token=token)


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser) -> UserOut:
    """The account behind the token."""
    return UserOut.model_validate(user)


class HandoffIn(BaseModel):
    """A handoff code given to the page after a login in the web app."""

    model_config = ConfigDict(extra="forbid")

    handoff: str = Field(min_length=1, max_length=4096)


@router.post(
    "/session", status_code=status.HTTP_204_NO_CONTENT, dependencies=[Depends(from_our_pages)]
)
def start_browser_session(body: HandoffIn, session: SessionDep, request: Request) -> Response:
    """Exchange a login's handoff code for the HttpOnly session cookie (web app use).

    A cookie of another login it replaces (another tab logged in on its own) joins the two,
    so logging out in either tab ends both (`accounts.join_browser`).
    """
    try:
        token = session_cookie.redeem_handoff(body.handoff)
    except session_cookie.InvalidHandoff as exc:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, detail="Invalid or expired login handoff. Log in again."
        ) from exc
    if accounts.user_for_token(session=session, token=token) is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="That login has ended.")
    accounts.join_browser(
        session=session,
        session_id=accounts.session_id_for_token(token) or "",
        replaced_token=request.cookies.get(session_cookie.cookie_name(), ""),
    )
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.set_cookie(value=token, **session_cookie.cookie_options())
    return response


@router.delete("/session", status_code=status.HTTP_204_NO_CONTENT)
def end_browser_session(request: Request, session: SessionDep) -> Response:
    """Log the browser out: revoke the cookie's session and delete the cookie."""
    token = request.cookies.get(session_cookie.cookie_name(), "")
    if token:
        accounts.revoke_token(session=session, token=token)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    options = session_cookie.cookie_options()
    response.delete_cookie(
        options["key"],
        path=options["path"],
        secure=options["secure"],
        httponly=True,
        samesite="lax",
    )
    return response
