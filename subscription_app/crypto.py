"""Encryption at rest, with one key for each purpose.

- `encrypt`/`decrypt`: AES-256-GCM (authenticated). The first `APP_ENCRYPTION_KEYS` key
  encrypts; every configured key can decrypt, so keys can be rotated
  (`python -m subscription_app.rotate_keys`). Every ciphertext names its `Purpose` in the
  associated data, so a value sealed as one kind (a Stripe id) can never be accepted as
  another (a login handoff code), even though one key makes both.
  Format: ``v2.<key id>.<base64(nonce || ciphertext+tag)>``; the associated data is
  ``<key id>|<purpose>``.
- `blind_index`: HMAC-SHA256 of the plain value, for equality lookups without decrypting.
  Its key is `APP_BLIND_INDEX_KEY`, its own secret: not derived from the session-signing key,
  and not one of the encryption keys. Lookups try every configured index key
  (`blind_indexes`), so the index can be re-keyed by the rotation command without a pause.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from subscription_app.settings import get_settings

_VERSION = "v2"
# Ciphertexts of the first release carried no purpose. They are still read where they can be
# stored (Stripe ids, event payloads) until `rotate_keys` rewrites them; never as anything else.
_LEGACY_VERSION = "v1"
_NONCE_BYTES = 12


class Purpose(enum.StrEnum):
    """What a ciphertext holds; bound into it as associated data."""

    STRIPE_ID = "stripe-id"
    EVENT_PAYLOAD = "stripe-event"
    LOGIN_HANDOFF = "login-handoff"


_LEGACY_PURPOSES = frozenset({Purpose.STRIPE_ID, Purpose.EVENT_PAYLOAD})


class DecryptionError(Exception):
    """A ciphertext could not be decrypted with any configured key, for this purpose."""


class UnknownKeyError(DecryptionError):
    """A well-formed ciphertext made with a key this process is not configured with (one
    added elsewhere first, in a rotation being rolled out): another process may read it."""


def generate_key() -> str:
    """A new random key in the format `APP_ENCRYPTION_KEYS` and `APP_BLIND_INDEX_KEY` expect."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def key_id(key: bytes) -> str:
    """A short, non-secret fingerprint naming which key made a ciphertext."""
    return hashlib.sha256(b"key-id:" + key).hexdigest()[:8]


@lru_cache(maxsize=8)
def _keyring(keys: tuple[bytes, ...]) -> tuple[tuple[str, AESGCM], ...]:
    return tuple((key_id(k), AESGCM(k)) for k in keys)


def _configured_keys() -> tuple[bytes, ...]:
    keys = get_settings().encryption_keys
    if not keys:
        raise RuntimeError(
            "APP_ENCRYPTION_KEYS is empty: set it (the dev runner generates one for you)"
        )
    return keys


def _aad(kid: str, purpose: Purpose) -> bytes:
    return f"{kid}|{purpose.value}".encode()


def encrypt(plaintext: str, *, purpose: Purpose, keys: tuple[bytes, ...] | None = None) -> str:
    """Encrypt `plaintext` for `purpose` under the first configured key."""
    ring = _keyring(keys or _configured_keys())
    kid, aead = ring[0]
    nonce = os.urandom(_NONCE_BYTES)
    sealed = aead.encrypt(nonce, plaintext.encode(), _aad(kid, purpose))
    return f"{_VERSION}.{kid}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def decrypt(token: str, *, purpose: Purpose, keys: tuple[bytes, ...] | None = None) -> str:
    """Decrypt a value `encrypt` made for the same `purpose`, with whichever key made it.

    Raises:
        DecryptionError: malformed, tampered, made for another purpose, or no such key.
    """
    try:
        version, kid, body = token.split(".", 2)
        raw = base64.urlsafe_b64decode(body)
    except ValueError as exc:
        raise DecryptionError("malformed ciphertext") from exc
    if version == _VERSION:
        aad = _aad(kid, purpose)
    elif version == _LEGACY_VERSION and purpose in _LEGACY_PURPOSES:
        aad = kid.encode()
    else:
        raise DecryptionError(f"ciphertext version {version!r} is not accepted here")
    for candidate_id, aead in _keyring(keys or _configured_keys()):
        if candidate_id != kid:
            continue
        try:
            return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad).decode()
        except InvalidTag as exc:
            raise DecryptionError("ciphertext failed authentication") from exc
    raise UnknownKeyError(f"no configured key has id {kid!r}")


def needs_rotation(token: str, *, keys: tuple[bytes, ...] | None = None) -> bool:
    """True when `token` was not made, in the current format, with the current (first) key."""
    current_id = _keyring(keys or _configured_keys())[0][0]
    return token.split(".", 2)[:2] != [_VERSION, current_id]


def _index_keys() -> tuple[bytes, ...]:
    keys = get_settings().blind_index_keys
    if not keys:
        raise RuntimeError(
            "APP_BLIND_INDEX_KEY is empty: set it (the dev runner generates one for you)"
        )
    return keys


def _index(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def blind_index(value: str) -> str:
    """Keyed hash of `value` under the current index key (HMAC-SHA256, hex): what rows store."""
    return _index(_index_keys()[0], value)


def blind_indexes(value: str) -> list[str]:
    """`value`'s hash under every configured index key, current first: what lookups match."""
    return [_index(key, value) for key in _index_keys()]


def legacy_index_key(secret_key: str) -> str:
    """The index key the first release derived from APP_SECRET_KEY, as an APP_BLIND_INDEX_KEY.

    Upgrading an existing database: append this after a new key in APP_BLIND_INDEX_KEY, run
    the rotation command, then drop it (see README, "Keys").
    """
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"stripe-id-blind-index"
    ).derive(secret_key.encode())
    return base64.urlsafe_b64encode(derived).decode()
