"""Telling users what happened: in-app messages (always) and email (when SMTP_URL is set)."""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from sqlmodel import Session

from subscription_app.billing import repository
from subscription_app.settings import get_settings

logger = logging.getLogger(__name__)
SMTP_TIMEOUT_SECONDS = 10


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


def tell_user(session: Session, *, user_id: int, email: str, kind: str, text: str) -> None:
    """Store an in-app message and, when SMTP is configured, email it too."""
    repository.add_notification(session, user_id, kind, text)
    send_email(to=email, subject="Your subscription", body=f"{text}\n\n— Subscription App\n")
