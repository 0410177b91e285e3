"""Shared test setup.

The app's settings are read from the environment, so this module pins a known test
environment before anything imports the app: no `.env` file, no Stripe keys from the
developer's shell, fresh secrets.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

for _name in list(os.environ):
    if _name.startswith(("STRIPE_", "APP_")) or _name in {
        "DATABASE_URL",
        "REDIS_URL",
        "SMTP_URL",
        "GRANIAN_WORKERS",
        "WEB_CONCURRENCY",
    }:
        del os.environ[_name]

from devtools.liveapp import free_port  # noqa: E402, F401  (re-exported for tests)
from subscription_app import crypto  # noqa: E402
from subscription_app.settings import Settings, get_settings  # noqa: E402

Settings.model_config["env_file"] = None  # never read a developer's .env in tests
os.environ.update(
    APP_ENV="development",
    APP_SECRET_KEY=secrets.token_urlsafe(48),
    APP_ENCRYPTION_KEYS=crypto.generate_key(),
    APP_BLIND_INDEX_KEY=crypto.generate_key(),
    DATABASE_URL="sqlite:///:memory:",
)
get_settings.cache_clear()

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
_STRIPE_FIXTURES = Path(__file__).parent / "fixtures" / "stripe_fixtures3.json"


def stripe_fixture(name: str) -> dict:
    """A fresh copy of Stripe's own published example object `name` (see tests/fixtures)."""
    return json.loads(_STRIPE_FIXTURES.read_text())["resources"][name]


def legacy_v1(plaintext: str, key: bytes) -> str:
    """A ciphertext as the first release made it: no purpose, the key id as associated data."""
    kid = crypto.key_id(key)
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), kid.encode())
    return f"v1.{kid}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def _backends() -> list:
    params = [pytest.param("sqlite", id="sqlite")]
    if TEST_DATABASE_URL:
        params.append(pytest.param("postgresql", id="postgresql"))
    return params


@pytest.fixture
def empty_database_url(request, tmp_path) -> Iterator[str]:
    """URL of an empty database of the backend named by `request.param`.

    PostgreSQL gets a fresh schema (dropped afterwards) in TEST_DATABASE_URL's database.
    """
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    from devtools.pgschema import fresh_schema

    with fresh_schema(TEST_DATABASE_URL) as url:
        yield url


def pytest_generate_tests(metafunc) -> None:
    """Run every test that asks for a database once per available backend.

    `@pytest.mark.backends("sqlite")` (or "postgresql") limits a test about one backend's own
    mechanism to that backend.
    """
    if "empty_database_url" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        params = [p for p in _backends() if marker is None or p.values[0] in marker.args]
        metafunc.parametrize("empty_database_url", params, indirect=True)


@pytest.fixture
def db_engine(empty_database_url, monkeypatch):
    """A migrated database, installed as the app's engine for the test."""
    from subscription_app import db
    from subscription_app.migrate import upgrade

    upgrade(empty_database_url)
    engine = db.make_engine(empty_database_url)
    monkeypatch.setattr(db, "get_engine", lambda: engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(db_engine):
    """A database session on the migrated test database."""
    from sqlmodel import Session

    # Expire on commit/rollback, so a read after `session.rollback()` sees what other
    # connections (the app under test) committed.
    with Session(db_engine) as s:
        yield s
        s.rollback()


@pytest.fixture
def settings_env(monkeypatch):
    """Set environment variables for one test and re-read the settings."""

    def _apply(**values: str | None) -> Settings:
        for key, value in values.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        return get_settings()

    yield _apply
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    """Every test starts with empty rate-limit counters."""
    from subscription_app import ratelimit

    ratelimit.reset()
    yield


# Test certificates (TLS for the SMTP and HTTPS-proxy tests) --------------------------------

# The names a certificate for this machine's test servers must carry.
LOCAL_NAMES: list[x509.GeneralName] = [
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.DNSName("localhost"),
]


def _cert_name(common_name: str) -> x509.Name:
    """An X.509 name with just a common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_pem(directory: Path, stem: str, cert: x509.Certificate, key) -> tuple[Path, Path]:
    """Write a certificate and its key as PEM files; returns (cert path, key path)."""
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def issue_certificate(
    subject: str,
    sans: list[x509.GeneralName],
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    is_ca: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for `subject`, signed by `issuer` (or by itself when None).

    Carries the extensions strict verifiers (VERIFY_X509_STRICT) insist on, so the only
    reason a handshake fails is the one a test sets up.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    issuer_name = issuer_cert.subject if issuer_cert else _cert_name(subject)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_cert_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key
