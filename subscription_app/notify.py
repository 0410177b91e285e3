"""Telling users what happened: in-app messages (always) and email (when SMTP_URL is set)."""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from sqlmodel import Session

from subscription_app.billing import repository
from subscription_app.settings import get_settings

logger = logging.getLogger(__name__)
SMTP_TIMEOUT_SECONDS = 10


def send_email(*, to: str, subject: str, body: str) -> bool:
    """Send a plain-text email through SMTP_URL. False (and a log line) if not sent.

    SMTP_URL forms: ``smtp://host:25`` (STARTTLS when the server offers it),
    ``smtps://user:password@host:465`` (TLS from the start).
    """
    url = get_settings().smtp_url
    if not url:
        return False
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        logger.error("SMTP_URL must look like smtp://host:port or smtps://user:pass@host:port")
        return False
    message = EmailMessage()
    message["From"] = get_settings().smtp_from
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    smtp_class = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    default_port = 465 if parts.scheme == "smtps" else 25
    try:
        with smtp_class(
            parts.hostname, parts.port or default_port, timeout=SMTP_TIMEOUT_SECONDS
        ) as smtp:
            if parts.scheme == "smtp":
                smtp.ehlo()
                if smtp.has_extn("starttls"):
                    smtp.starttls()
                    smtp.ehlo()
            if parts.username:
                smtp.login(unquote(parts.username), unquote(parts.password or ""))
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        # An email we could not send must never undo what the user did; the in-app
        # message is already stored.
        logger.warning("could not send email: %s", type(exc).__name__)
        return False
    return True


def tell_user(session: Session, *, user_id: int, email: str, kind: str, text: str) -> None:
    """Store an in-app message and, when SMTP is configured, email it too."""
    repository.add_notification(session, user_id, kind, text)
    send_email(to=email, subject="Your subscription", body=f"{text}\n\n— Subscription App\n")
