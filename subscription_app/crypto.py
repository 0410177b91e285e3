"""Encryption at rest for Stripe identifiers.

- `encrypt`/`decrypt`: AES-256-GCM (authenticated). The first configured key encrypts; every
  configured key can decrypt, so keys can be rotated (`python -m subscription_app.rotate_keys`).
  Ciphertext format: ``v1.<key id>.<base64(nonce || ciphertext+tag)>``.
- `blind_index`: HMAC-SHA256 of the plain value, for equality lookups without decrypting.
  Its key is derived from APP_SECRET_KEY, so rotating encryption keys never breaks lookups.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from subscription_app.settings import get_settings

_VERSION = "v1"
_NONCE_BYTES = 12


class DecryptionError(Exception):
    """A ciphertext could not be decrypted with any configured key."""


def generate_key() -> str:
    """A new random key in the format `APP_ENCRYPTION_KEYS` expects."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def key_id(key: bytes) -> str:
    """A short, non-secret fingerprint naming which key made a ciphertext."""
    return hashlib.sha256(b"key-id:" + key).hexdigest()[:8]


@lru_cache(maxsize=8)
def _keyring(keys: tuple[bytes, ...]) -> tuple[tuple[str, AESGCM], ...]:
    return tuple((key_id(k), AESGCM(k)) for k in keys)


def _configured_keys() -> tuple[bytes, ...]:
    keys = tuple(get_settings().encryption_keys)
    if not keys:
        raise RuntimeError(
            "APP_ENCRYPTION_KEYS is empty: set it (the dev runner generates one for you)"
        )
    return keys


def encrypt(plaintext: str, *, keys: tuple[bytes, ...] | None = None) -> str:
    """Encrypt `plaintext` under the first configured key."""
    ring = _keyring(keys or _configured_keys())
    kid, aead = ring[0]
    nonce = os.urandom(_NONCE_BYTES)
    sealed = aead.encrypt(nonce, plaintext.encode(), kid.encode())
    return f"{_VERSION}.{kid}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def decrypt(token: str, *, keys: tuple[bytes, ...] | None = None) -> str:
    """Decrypt a value made by `encrypt` with whichever configured key made it."""
    try:
        version, kid, body = token.split(".", 2)
        raw = base64.urlsafe_b64decode(body)
    except ValueError as exc:
        raise DecryptionError("malformed ciphertext") from exc
    if version != _VERSION:
        raise DecryptionError(f"unknown ciphertext version {version!r}")
    for candidate_id, aead in _keyring(keys or _configured_keys()):
        if candidate_id != kid:
            continue
        try:
            return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], kid.encode()).decode()
        except InvalidTag as exc:
            raise DecryptionError("ciphertext failed authentication") from exc
    raise DecryptionError(f"no configured key has id {kid!r}")


def needs_rotation(token: str, *, keys: tuple[bytes, ...] | None = None) -> bool:
    """True when `token` was not made with the current (first) key."""
    current_id = _keyring(keys or _configured_keys())[0][0]
    return token.split(".", 2)[1:2] != [current_id]


@lru_cache(maxsize=4)
def _index_key(secret: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"stripe-id-blind-index"
    ).derive(secret.encode())


def blind_index(value: str) -> str:
    """Keyed hash of `value` for lookups (HMAC-SHA256, hex)."""
    key = _index_key(get_settings().app_secret_key.get_secret_value())
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
