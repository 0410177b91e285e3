"""Accounts: registration, login, sessions and tokens.

Plain keyword-only functions that take a database session; the Reflex states and the REST
routes both call them. A login creates an `AuthSession` row and a signed JWT that names it,
so a logout (revoking the row) invalidates the token even before it expires.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from email_validator import EmailNotValidError, validate_email
from pwdlib import PasswordHash
from sqlalchemy import or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from subscription_app import changes, ratelimit
from subscription_app.errors import AppError
from subscription_app.models import AuthSession, User, utcnow
from subscription_app.settings import get_settings

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 128
EMAIL_MAX_LENGTH = 254
JWT_ALGORITHM = "HS256"
JWT_AUDIENCE = "subscription_app"

_password_hash = PasswordHash.recommended()  # argon2id with current recommended parameters
# Verified against when the email is unknown, so both failures cost the same time.
_DUMMY_HASH = _password_hash.hash(secrets.token_urlsafe(16))


# Password hashes computed at once in this process. One argon2id check takes 64 MiB and, on
# its 4 lanes, every core for about 0.2 s (measured: 184 ms on this project's 2-core
# machine): unbounded, a flood of logins with made-up emails (each its own per-account
# budget) would take every thread of the pool, gigabytes of memory and all the CPU that
# webhooks and pages need. Beyond this, requests queue for at most `HASHING_WAIT_SECONDS`,
# then get "busy" (503, Retry-After) instead of piling up.
HASHES_AT_ONCE = 1
HASHING_WAIT_SECONDS = 5.0
# At most this many attempts wait for a check at once (about `HASHING_WAIT_SECONDS` of
# checks); the next is told "busy" at once instead of taking another thread to wait on.
WAITING_AT_MOST = 25
BUSY_MESSAGE = "Too many people are signing in right now. Please try again in a moment."
_hashing = threading.BoundedSemaphore(HASHES_AT_ONCE)
_queue = threading.BoundedSemaphore(HASHES_AT_ONCE + WAITING_AT_MOST)
_held = threading.local()  # how deep this thread is inside `password_check_slot`


class AccountError(AppError):
    """A problem the user can fix; `message` is safe to show them."""


class HashingBusy(AppError):
    """Every password check this process may run at once is taken, and stayed taken."""

    kind = "busy"

    def __init__(self) -> None:
        super().__init__(BUSY_MESSAGE, retry_after=max(1, round(HASHING_WAIT_SECONDS)))


@contextmanager
def password_check_slot() -> Iterator[None]:
    """Hold one of this process's password checks (`HASHES_AT_ONCE`); re-entrant per thread.

    `login` and `register` take it before counting the attempt and before asking the
    database, so an attempt told "busy" has counted nothing against anyone's limits and
    held no database connection while it waited. It blocks: call it from a worker thread,
    never on an event loop, where two coroutines would share one thread's hold (every
    caller in the app runs in a thread; tests may call it on a loop, one at a time).

    Raises:
        HashingBusy: none came free within `HASHING_WAIT_SECONDS`, or `WAITING_AT_MOST`
            attempts wait already.
    """
    depth = getattr(_held, "depth", 0)
    if depth == 0:
        if not _queue.acquire(blocking=False):
            raise HashingBusy()
        try:
            acquired = _hashing.acquire(timeout=HASHING_WAIT_SECONDS)
        except BaseException:  # interrupted while waiting: its place is given back
            _queue.release()
            raise
        if not acquired:
            _queue.release()
            raise HashingBusy()
    _held.depth = depth + 1
    try:
        yield
    finally:
        _held.depth = depth
        if depth == 0:
            _hashing.release()
            _queue.release()


class InvalidEmail(AccountError):
    """The email address is not valid."""


class InvalidPassword(AccountError):
    """The password does not meet the rules."""


class EmailTaken(AccountError):
    """An account with this email exists already."""

    kind = "conflict"


class InvalidCredentials(AccountError):
    """Unknown email or wrong password (deliberately indistinguishable)."""

    kind = "unauthorized"


INVALID_CREDENTIALS_MESSAGE = "Incorrect email or password."


def normalize_email(email: str) -> str:
    """Validate an email address and return its normalised (lower-case) form.

    Raises:
        InvalidEmail: with a message fit for the user.
    """
    email = (email or "").strip()
    if not email:
        raise InvalidEmail("Enter your email address.")
    if len(email) > EMAIL_MAX_LENGTH:
        raise InvalidEmail("That email address is too long.")
    try:
        result = validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEmail(f"That email address is not valid: {exc}") from exc
    return result.normalized.lower()


def check_password_rules(password: str) -> None:
    """Raise `InvalidPassword` when `password` is unacceptable."""
    if len(password or "") < PASSWORD_MIN_LENGTH:
        raise InvalidPassword(f"Use a password of at least {PASSWORD_MIN_LENGTH} characters.")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise InvalidPassword(f"Use a password of at most {PASSWORD_MAX_LENGTH} characters.")
    if not password.strip():
        raise InvalidPassword("The password cannot be only spaces.")


def hash_password(password: str) -> str:
    """Hash a password with argon2id.

    Raises:
        HashingBusy: the process's password checks stayed taken (`HASHES_AT_ONCE`).
    """
    with password_check_slot():
        return _password_hash.hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    """True when `password` matches `password_hash`.

    Raises:
        HashingBusy: the process's password checks stayed taken (`HASHES_AT_ONCE`).
    """
    with password_check_slot():
        try:
            return _password_hash.verify(password, password_hash)
        except Exception:  # a malformed stored hash must not become a 500
            return False


EMAIL_TAKEN_MESSAGE = "An account with this email already exists. Log in instead."


def register_user(*, session: Session, email: str, password: str) -> User:
    """Create an account.

    Raises:
        InvalidEmail, InvalidPassword, EmailTaken.
    """
    normalized = normalize_email(email)
    check_password_rules(password)
    _refuse_taken(session, normalized)
    return _add_user(session, normalized, hash_password(password))


def _refuse_taken(session: Session, normalized: str) -> None:
    if session.exec(select(User).where(User.email == normalized)).first() is not None:
        raise EmailTaken(EMAIL_TAKEN_MESSAGE)


def _add_user(session: Session, normalized: str, password_hash: str) -> User:
    user = User(email=normalized, password_hash=password_hash)
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:  # lost a race with a concurrent registration
        session.rollback()
        raise EmailTaken(EMAIL_TAKEN_MESSAGE) from exc
    return user


def authenticate(*, session: Session, email: str, password: str) -> User:
    """Return the user for these credentials.

    Raises:
        InvalidCredentials: for an unknown email and a wrong password alike.
    """
    try:
        normalized = normalize_email(email)
    except InvalidEmail:
        normalized = None
    user = (
        session.exec(select(User).where(User.email == normalized)).first() if normalized else None
    )
    if user is None:
        verify_password(password or "", _DUMMY_HASH)  # same cost as a real check
        raise InvalidCredentials(INVALID_CREDENTIALS_MESSAGE)
    with password_check_slot():
        try:
            valid, upgraded_hash = _password_hash.verify_and_update(
                password or "", user.password_hash
            )
        except Exception:  # a malformed stored hash must not become a 500
            valid, upgraded_hash = False, None
    if not valid:
        raise InvalidCredentials(INVALID_CREDENTIALS_MESSAGE)
    if upgraded_hash is not None:
        # Hashing parameters were raised since this hash was made: upgrade it transparently.
        user.password_hash = upgraded_hash
        session.add(user)
    return user


def account_key(email: str) -> str:
    """The email as login normalizes it: what per-account limits count against.

    An address typed with full-width letters logs into the plain one, so both must count
    against the same account.
    """
    try:
        return normalize_email(email)
    except InvalidEmail:
        return (email or "").strip().lower()


@dataclass(frozen=True)
class IssuedToken:
    """A bearer token, when it stops working, and whose it is.

    `session_id` is the stored (hashed) id of the login session: no credential, so a Reflex
    state may keep it on the server to re-check the login on every event.
    """

    token: str
    expires_at: datetime
    session_id: str
    email: str

    @property
    def expires_in(self) -> int:
        """Seconds until expiry."""
        return max(0, int((self.expires_at - utcnow()).total_seconds()))


def _hash_session_id(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def issue_token(*, session: Session, user: User) -> IssuedToken:
    """Start a login session for `user` and return its signed token."""
    settings = get_settings()
    now = utcnow()
    expires_at = now + timedelta(minutes=settings.session_ttl_minutes)
    raw_sid = secrets.token_urlsafe(32)
    if user.id is None:
        raise ValueError("the user has not been saved")
    session_id = _hash_session_id(raw_sid)
    # Only a hash of the session id is stored, so a database leak yields no usable token.
    session.add(AuthSession(id=session_id, user_id=user.id, expires_at=expires_at))
    session.flush()
    token = jwt.encode(
        {
            "sub": str(user.id),
            "sid": raw_sid,
            "aud": JWT_AUDIENCE,
            "iat": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
        },
        settings.app_secret_key.get_secret_value(),
        algorithm=JWT_ALGORITHM,
    )
    return IssuedToken(token=token, expires_at=expires_at, session_id=session_id, email=user.email)


def _decode(token: str) -> dict | None:
    if not token or len(token) > 4096:
        return None
    try:
        return jwt.decode(
            token,
            get_settings().app_secret_key.get_secret_value(),
            algorithms=[JWT_ALGORITHM],
            audience=JWT_AUDIENCE,
            options={"require": ["sub", "sid", "exp", "aud"]},
        )
    except jwt.PyJWTError:
        return None


def session_id_for_token(token: str) -> str | None:
    """The id of the login session a token names (its stored, hashed form), or None.

    Only checks the signature and expiry; `user_for_session` checks the session itself. The
    id is not a credential: the API accepts only the signed token.
    """
    claims = _decode(token)
    return _hash_session_id(str(claims["sid"])) if claims else None


def user_for_session(*, session: Session, session_id: str) -> User | None:
    """The user of a login session, or None if it is unknown, logged out or expired."""
    if not session_id:
        return None
    auth = session.get(AuthSession, session_id)
    if auth is None or auth.revoked_at is not None or auth.expires_at <= utcnow():
        return None
    return session.get(User, auth.user_id)


def user_for_token(*, session: Session, token: str) -> User | None:
    """The user a token belongs to, or None if it is invalid, expired or logged out."""
    claims = _decode(token)
    if claims is None:
        return None
    user = user_for_session(session=session, session_id=_hash_session_id(str(claims["sid"])))
    if user is None or str(user.id) != str(claims["sub"]):
        return None
    return user


def revoke_session(*, session: Session, session_id: str) -> bool:
    """Log out a login session by its id, with every login of its browser (`join_browser`).
    False if it was not active."""
    auth = session.get(AuthSession, session_id) if session_id else None
    if auth is None or auth.revoked_at is not None:
        return False
    now = utcnow()
    group = auth.browser_id or auth.id
    ending = session.exec(  # `auth` among them: it is active, and in its own group
        select(AuthSession).where(
            or_(col(AuthSession.id) == group, col(AuthSession.browser_id) == group),
            col(AuthSession.revoked_at).is_(None),
        )
    ).all()
    for member in ending:
        member.revoked_at = now
        session.add(member)
    # The users' open pages learn of it at once (they leave the dashboard).
    for user_id in sorted({member.user_id for member in ending}):
        changes.mark(session, user_id)
    return True


def join_browser(*, session: Session, session_id: str, replaced_token: str) -> None:
    """The browser's cookie now names login `session_id` instead of `replaced_token`'s.

    Two tabs of one browser, each logged in on its own, hold two logins while the cookie
    names only the newer; logging out (in either tab) must end both, or the other tab keeps
    acting. So the new login joins the replaced one's group (`AuthSession.browser_id`), and
    `revoke_session` ends the group. Also when the two are different people's: logging out
    on a shared computer ends every login of the browser.
    """
    replaced_id = session_id_for_token(replaced_token) if replaced_token else None
    if replaced_id is None or replaced_id == session_id:
        return
    replaced = session.get(AuthSession, replaced_id)
    current = session.get(AuthSession, session_id)
    if replaced is None or current is None:
        return
    group = replaced.browser_id or replaced.id
    if current.browser_id is None and current.id != group:
        current.browser_id = group
        session.add(current)


def revoke_token(*, session: Session, token: str) -> bool:
    """Log out: revoke the session behind `token`. Returns False if it was not valid."""
    session_id = session_id_for_token(token)
    return revoke_session(session=session, session_id=session_id) if session_id else False


def login(
    *, session: Session, email: str, password: str, client_address: str | None
) -> IssuedToken:
    """The one login path (web page and API): limits, password check, counters, token.

    Raises:
        ratelimit.RateLimited: too many attempts (counted before the password is checked).
        HashingBusy: no password check came free in time (nothing counted).
        InvalidCredentials: unknown email or wrong password.
    """
    account = account_key(email)
    # Over a limit: refused at once, not after queueing for a password check.
    ratelimit.before_login(account=account, client_address=client_address, count=False)
    with password_check_slot():  # before counting and before any query: see its docstring
        ratelimit.before_login(account=account, client_address=client_address)
        try:
            user = authenticate(session=session, email=email, password=password)
        except InvalidCredentials:
            ratelimit.login_failed(account=account)
            raise
    ratelimit.login_succeeded(account=account, client_address=client_address)
    return issue_token(session=session, user=user)


def register(*, session: Session, email: str, password: str, client_address: str | None) -> User:
    """The one registration path: limits, then `register_user`.

    Raises:
        ratelimit.RateLimited, HashingBusy, InvalidEmail, InvalidPassword, EmailTaken.
    """
    account = account_key(email)
    ratelimit.check_register(account=account, client_address=client_address, count=False)
    with password_check_slot():  # before counting and before any query, as in `login`
        ratelimit.check_register(account=account, client_address=client_address)
        normalized = normalize_email(email)
        check_password_rules(password)
        _refuse_taken(session, normalized)  # a read: refused before a hash is spent on it
        password_hash = hash_password(password)
    # The write after the check is given back: a write that waits (SQLite waits up to 30 s
    # for another writer's lock) must not hold every password check of the process. (A
    # registration of the same email meanwhile: the unique index refuses it, `_add_user`.)
    return _add_user(session, normalized, password_hash)
