"""Email goes out only over a verified TLS connection when there is anything to protect.

Real SMTP conversations with aiosmtpd servers on 127.0.0.1, and certificates made here with
`cryptography`: a test CA the client is told to trust (through SSL_CERT_FILE, which
`ssl.create_default_context()` honours), a server certificate it signed, one it signed for
another name, and a self-signed one nobody trusts.

No waiting is needed after `send_email` returns: SMTP is lock-step, the client reads the
server's reply to every command before it sends the next one or hangs up, so whatever the
server was going to record (AUTH, the message) it has recorded by then.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509

from subscription_app.notifications import send_email
from tests.conftest import LOCAL_NAMES, free_port, issue_certificate, write_pem

PASSWORD = "pa ss/w@rd-never-logged"
USER_URL_PART = "mailer:pa%20ss%2Fw%40rd-never-logged@"


# --- certificates ---------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path  # the test CA, trusted by the client in these tests
    trusted: tuple[Path, Path]  # (cert, key) for 127.0.0.1 and localhost, signed by the CA
    other_name: tuple[Path, Path]  # signed by the CA, but for other.example only
    self_signed: tuple[Path, Path]  # for 127.0.0.1 and localhost, signed by nobody trusted


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    directory = tmp_path_factory.mktemp("smtp-certs")
    local = LOCAL_NAMES
    ca = issue_certificate("Subscription App Test CA", [], is_ca=True)
    ca_path, _ = write_pem(directory, "ca", *ca)
    return Certs(
        ca=ca_path,
        trusted=write_pem(directory, "trusted", *issue_certificate("127.0.0.1", local, issuer=ca)),
        other_name=write_pem(
            directory,
            "other-name",
            *issue_certificate("other.example", [x509.DNSName("other.example")], issuer=ca),
        ),
        self_signed=write_pem(directory, "self-signed", *issue_certificate("127.0.0.1", local)),
    )


@pytest.fixture(autouse=True)
def trust_only_test_ca(certs, monkeypatch, tmp_path):
    """The client trusts the test CA and nothing else (no system CAs, whatever the host has)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    empty_dir = tmp_path / "no-more-cas"
    empty_dir.mkdir()
    monkeypatch.setenv("SSL_CERT_DIR", str(empty_dir))


# --- the SMTP server ------------------------------------------------------------------


@dataclass
class Recorder:
    """aiosmtpd handler + authenticator remembering what the client did."""

    messages: list[str] = field(default_factory=list)
    delivered_over_tls: list[bool] = field(default_factory=list)
    auth_attempts: list[dict] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.content.decode("utf-8", errors="replace"))
        self.delivered_over_tls.append(_over_tls(server))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        self.auth_attempts.append(
            {
                "mechanism": mechanism,
                "login": getattr(auth_data, "login", None),
                "password": getattr(auth_data, "password", None),
                "over_tls": _over_tls(server),
            }
        )
        return AuthResult(success=True)


def _over_tls(server) -> bool:
    # Both after STARTTLS and on an implicit-TLS (SMTPS) listener the transport is TLS.
    return server.transport.get_extra_info("ssl_object") is not None


def _server_context(cert_and_key: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, cert_and_key))
    return context


@pytest.fixture
def smtp_server(settings_env, caplog):
    """Start an SMTP server and point SMTP_URL at it: `smtp_server(mode, cert, user=False)`.

    mode "starttls": plain listener offering STARTTLS (AUTH only once TLS is up);
    mode "smtps": TLS from the first byte; mode "plain": no TLS at all, AUTH offered anyway
    (a server that would happily take a password in the clear).
    """
    caplog.set_level(logging.WARNING, logger="subscription_app.notifications")
    started: list[Controller] = []

    def _start(mode: str, cert: tuple[Path, Path] | None = None, *, user: bool = False):
        recorder = Recorder()
        kwargs: dict = {"authenticator": recorder.authenticate}
        if mode == "starttls":
            kwargs["tls_context"] = _server_context(cert)
        elif mode == "smtps":
            kwargs["ssl_context"] = _server_context(cert)
            # aiosmtpd only counts STARTTLS as TLS; this listener is TLS from the first byte.
            kwargs["auth_require_tls"] = False
        else:
            kwargs["auth_require_tls"] = False
        # start() returns once the server answers (aiosmtpd waits on an event for that).
        controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), **kwargs)
        controller.start()
        started.append(controller)
        scheme = "smtps" if mode == "smtps" else "smtp"
        credentials = USER_URL_PART if user else ""
        settings_env(SMTP_URL=f"{scheme}://{credentials}127.0.0.1:{controller.port}")
        return recorder

    yield _start
    for controller in started:
        controller.stop()


def send() -> bool:
    return send_email(to="member@example.com", subject="Your subscription", body="Hello.\n")


def assert_refused(recorder: Recorder, caplog, reason: str) -> None:
    assert recorder.messages == []
    assert recorder.auth_attempts == []
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "subscription_app.notifications" and r.levelno >= logging.WARNING
    ]
    assert any(reason in w for w in warnings), warnings
    assert not any(PASSWORD in r.getMessage() for r in caplog.records)


# --- the cases ------------------------------------------------------------------------


def test_starttls_with_trusted_certificate_delivers_over_tls(smtp_server, certs):
    recorder = smtp_server("starttls", certs.trusted, user=True)

    assert send() is True

    assert len(recorder.messages) == 1
    assert "To: member@example.com" in recorder.messages[0]
    assert recorder.delivered_over_tls == [True]
    # The password went over the encrypted connection, intact.
    assert len(recorder.auth_attempts) == 1
    assert recorder.auth_attempts[0]["over_tls"] is True
    assert recorder.auth_attempts[0]["login"] == b"mailer"
    assert recorder.auth_attempts[0]["password"] == PASSWORD.encode()


@pytest.mark.parametrize("user", [False, True], ids=["anonymous", "credentials"])
def test_starttls_with_untrusted_certificate_is_refused(smtp_server, certs, caplog, user):
    recorder = smtp_server("starttls", certs.self_signed, user=user)

    assert send() is False

    assert_refused(recorder, caplog, "SSLCertVerificationError")


def test_smtps_with_trusted_certificate_delivers(smtp_server, certs):
    recorder = smtp_server("smtps", certs.trusted, user=True)

    assert send() is True

    assert len(recorder.messages) == 1
    assert recorder.delivered_over_tls == [True]
    assert [a["over_tls"] for a in recorder.auth_attempts] == [True]


def test_smtps_with_untrusted_certificate_is_refused(smtp_server, certs, caplog):
    recorder = smtp_server("smtps", certs.self_signed, user=True)

    assert send() is False

    assert_refused(recorder, caplog, "SSLCertVerificationError")


def test_credentials_without_starttls_are_never_sent(smtp_server, caplog):
    recorder = smtp_server("plain", user=True)

    assert send() is False

    assert_refused(recorder, caplog, "STARTTLS")


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_certificate_for_another_name_is_refused(smtp_server, certs, caplog, mode):
    # Signed by the trusted CA, so only the name check can catch it.
    recorder = smtp_server(mode, certs.other_name, user=True)

    assert send() is False

    assert_refused(recorder, caplog, "SSLCertVerificationError")


def test_anonymous_mail_to_a_relay_without_tls_is_still_delivered(smtp_server):
    # A local relay (localhost:25 without TLS) keeps working: nothing secret is sent.
    recorder = smtp_server("plain")

    assert send() is True

    assert len(recorder.messages) == 1
    assert recorder.delivered_over_tls == [False]
    assert recorder.auth_attempts == []
