"""`/api/v1/auth`: register, log in (JWT bearer token), log out, who am I."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from subscription_app import accounts
from subscription_app.api.deps import CurrentUser, SessionDep, get_token

router = APIRouter(prefix="/auth", tags=["auth"])


class Credentials(BaseModel):
    """Email and password, as sent by the client."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=1, max_length=accounts.EMAIL_MAX_LENGTH)
    password: str = Field(min_length=1, max_length=accounts.PASSWORD_MAX_LENGTH)


class UserOut(BaseModel):
    """A user as the API shows it."""

    id: int
    email: str
    created_at: datetime


class TokenOut(BaseModel):
    """A bearer token."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=UserOut)
def register(body: Credentials, session: SessionDep) -> UserOut:
    """Create an account. 409 if the email is taken, 422 if email or password is invalid."""
    try:
        user = accounts.register_user(session=session, email=body.email, password=body.password)
    except accounts.EmailTaken as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=exc.message) from exc
    except accounts.AccountError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=exc.message) from exc
    return UserOut(id=user.id, email=user.email, created_at=user.created_at)


@router.post("/login", response_model=TokenOut)
def login(body: Credentials, session: SessionDep) -> TokenOut:
    """Exchange email and password for a bearer token (401 on any mismatch)."""
    try:
        user = accounts.authenticate(session=session, email=body.email, password=body.password)
    except accounts.InvalidCredentials as exc:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=exc.message,
            headers={"WWW-Authenticate": "Bearer"},
        ) from exc
    issued = accounts.issue_token(session=session, user=user)
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
    return UserOut(id=user.id, email=user.email, created_at=user.created_at)
