"""Telling people what happened: in-app messages, and email through an outbox.

`tell` writes, in the caller's transaction, the in-app message and (when SMTP_URL is set) an
`OutboxEmail` row. Nothing is sent from inside that transaction: each worker's webhook
processor calls `deliver_due` on its rounds, which claims due rows, sends them and records
the outcome, retrying with backoff. So an email goes out only for a change that committed,
and an unreachable mail server delays mail without losing it or undoing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from sqlalchemy import update
from sqlmodel import Session, col, or_, select

from subscription_app import changes, db
from subscription_app.models import Notification, OutboxEmail, User, utcnow
from subscription_app.settings import get_settings

logger = logging.getLogger(__name__)
SMTP_TIMEOUT_SECONDS = 10
SUBJECT = "Your subscription"
SIGNATURE = "\n\n— Subscription App\n"
MAX_ATTEMPTS = 6
# Waits after each failed attempt: a few seconds, then up to an hour (about 1.5 hours in all).
BACKOFF_SECONDS = (5, 30, 120, 600, 3600)
# How long a worker may take to send one email before another may take it over; longer than
# an SMTP exchange can last (connect, TLS, AUTH, DATA, each bounded by SMTP_TIMEOUT_SECONDS).
CLAIM_SECONDS = 120


def send_email(*, to: str, subject: str, body: str) -> bool:
    """Send a plain-text email through SMTP_URL. False (and a log line) if not sent; never raises.

    SMTP_URL forms: ``smtp://[user:password@]host:25`` (upgraded with STARTTLS whenever the
    server offers it) and ``smtps://[user:password@]host:465`` (TLS from the start).

    TLS always verifies the server's certificate chain and host name against the system's
    CA store (``ssl.create_default_context()``; ``SSL_CERT_FILE`` points it elsewhere). A
    certificate that fails verification means the email is not sent. Credentials are only
    ever sent over TLS: ``smtp://`` with a user name to a server without STARTTLS sends
    nothing. Only an anonymous ``smtp://`` to a server without STARTTLS (a local relay)
    sends in the clear.
    """
    url = get_settings().smtp_url
    if not url:
        return False
    parts = urlsplit(url)
    try:
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
    except ValueError:  # a port that is not a number in 0..65535
        port = None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname or port is None:
        logger.error("SMTP_URL must look like smtp://host:port or smtps://user:pass@host:port")
        return False
    try:
        # One verifying context for both forms. Without one, smtplib falls back to a context
        # that checks neither the chain nor the name, so anyone on the path could pose as the
        # server and read the mail and the password.
        tls = ssl.create_default_context()
        # Built inside the try: a header value the email package refuses (ValueError)
        # must not escape either.
        message = EmailMessage()
        message["From"] = get_settings().smtp_from
        message["To"] = to
        message["Subject"] = subject
        message.set_content(body)
        smtp: smtplib.SMTP
        if parts.scheme == "smtps":
            smtp = smtplib.SMTP_SSL(parts.hostname, port, timeout=SMTP_TIMEOUT_SECONDS, context=tls)
        else:
            smtp = smtplib.SMTP(parts.hostname, port, timeout=SMTP_TIMEOUT_SECONDS)
        with smtp:
            if parts.scheme == "smtp":
                smtp.ehlo()
                if smtp.has_extn("starttls"):
                    smtp.starttls(context=tls)
                    smtp.ehlo()  # capabilities (AUTH among them) can differ once under TLS
                elif parts.username:
                    # Never put the password on the wire in the clear. This also defeats a
                    # man in the middle who strips the STARTTLS offer to get it that way.
                    logger.warning(
                        "email not sent: SMTP server %s offers no STARTTLS and SMTP_URL "
                        "has credentials, which are only sent over TLS",
                        parts.hostname,
                    )
                    return False
            if parts.username:
                smtp.login(unquote(parts.username), unquote(parts.password or ""))
            smtp.send_message(message)
    except ssl.SSLCertVerificationError as exc:
        # Name the reason (untrusted issuer, host name mismatch, expired...) so the operator
        # can tell a misconfigured CA store from a wrong host; it carries no secret.
        logger.warning("could not send email: %s (%s)", type(exc).__name__, exc.verify_message)
        return False
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        # An email we could not send must never undo what the user did; the in-app
        # message is already stored. Only the class name is logged: exception texts carry
        # server replies, which may include the AUTH exchange.
        logger.warning("could not send email: %s", type(exc).__name__)
        return False
    return True


def tell(session: Session, *, user_id: int, kind: str, text: str) -> None:
    """Leave an in-app message for the user and, when SMTP is configured, queue it as email.

    Both rows are written in the caller's transaction: they exist only if it commits.
    """
    session.add(Notification(user_id=user_id, kind=kind, text=text[:1000]))
    if get_settings().smtp_url:
        session.add(OutboxEmail(user_id=user_id, subject=SUBJECT, body=f"{text}{SIGNATURE}"))
    session.flush()
    changes.mark(session, user_id)


def recent_messages(session: Session, *, user_id: int, limit: int = 5) -> list[str]:
    """The user's newest in-app messages, newest first."""
    return list(
        session.exec(
            select(Notification.text)
            .where(Notification.user_id == user_id)
            .order_by(col(Notification.created_at).desc(), col(Notification.id).desc())
            .limit(limit)
        ).all()
    )


def latest_message_id(session: Session, *, user_id: int) -> int:
    """The id of the user's newest message (0 if none): it changes when a message is added."""
    newest = session.exec(
        select(Notification.id)
        .where(Notification.user_id == user_id)
        .order_by(col(Notification.id).desc())
        .limit(1)
    ).first()
    return newest or 0


@dataclass
class Delivery:
    """What one `deliver_due` round did."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0


def _claim(session: Session, row_id: int, now: datetime) -> bool:
    """Take one due row for this worker; False if another worker has it or it is done."""
    result = session.execute(
        update(OutboxEmail)
        .where(
            col(OutboxEmail.id) == row_id,
            col(OutboxEmail.status) == "pending",
            col(OutboxEmail.next_attempt_at) <= now,
            or_(col(OutboxEmail.claimed_until).is_(None), col(OutboxEmail.claimed_until) < now),
        )
        .values(
            claimed_until=now + timedelta(seconds=CLAIM_SECONDS),
            attempts=OutboxEmail.attempts + 1,
        )
    )
    session.commit()
    return bool(getattr(result, "rowcount", 0))


def _record(session: Session, row_id: int, sent: bool, now: datetime) -> str:
    row = session.get(OutboxEmail, row_id)
    if row is None:  # the account was deleted meanwhile
        return "failed"
    row.claimed_until = None
    if sent:
        row.status, row.sent_at, row.last_error = "sent", now, None
    elif row.attempts >= MAX_ATTEMPTS:
        row.status, row.last_error = "failed", "gave up after repeated failures (see log)"
        logger.error("gave up on email %s after %s attempts", row_id, row.attempts)
    else:
        wait = BACKOFF_SECONDS[min(row.attempts, len(BACKOFF_SECONDS)) - 1]
        row.next_attempt_at = now + timedelta(seconds=wait)
        row.last_error = "not sent (see log)"
    session.add(row)
    session.commit()
    return row.status if row.status != "pending" else "retrying"


def deliver_due(*, limit: int = 20) -> Delivery:
    """Send queued emails that are due; blocking (the processor runs it in a thread).

    Each row is claimed by one worker at a time, sent outside any transaction, then marked
    sent, or retried later, or failed after `MAX_ATTEMPTS`. A worker that dies mid-send
    leaves its claim to expire, so the row is sent again later (at least once).
    """
    done = Delivery()
    if not get_settings().smtp_url:
        return done
    engine = db.get_engine()
    with Session(engine, expire_on_commit=False) as session:
        now = utcnow()
        due = session.exec(
            select(OutboxEmail.id, User.email, OutboxEmail.subject, OutboxEmail.body)
            .join(User, col(User.id) == OutboxEmail.user_id)
            .where(
                col(OutboxEmail.status) == "pending",
                col(OutboxEmail.next_attempt_at) <= now,
                or_(
                    col(OutboxEmail.claimed_until).is_(None),
                    col(OutboxEmail.claimed_until) < now,
                ),
            )
            .order_by(col(OutboxEmail.id))
            .limit(limit)
        ).all()
        for row_id, to, subject, body in due:
            if row_id is None or not _claim(session, row_id, utcnow()):
                continue
            sent = send_email(to=to, subject=subject, body=body)
            outcome = _record(session, row_id, sent, utcnow())
            if outcome == "sent":
                done.sent += 1
            elif outcome == "failed":
                done.failed += 1
            else:
                done.retrying += 1
    return done


OUTBOX_POLL_SECONDS = 2.0


async def run_outbox(stop: asyncio.Event | None = None) -> None:
    """Deliver queued email until cancelled (a lifespan task of every backend worker).

    Kept apart from the webhook processor so a slow mail server never holds up webhooks.
    Without SMTP_URL it only sleeps: nothing is queued then.
    """
    while stop is None or not stop.is_set():
        try:
            await asyncio.to_thread(deliver_due)
        except asyncio.CancelledError:
            raise
        except Exception:  # the database may be down: try again on the next round
            logger.exception("email outbox round failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                stop.wait() if stop else asyncio.sleep(OUTBOX_POLL_SECONDS), OUTBOX_POLL_SECONDS
            )
