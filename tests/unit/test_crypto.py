"""Encryption of Stripe IDs, one purpose per ciphertext, and the blind index's own key."""

import base64
import json
import time

import pytest

from subscription_app import crypto, session_cookie
from subscription_app.crypto import Purpose
from tests.conftest import legacy_v1

STRIPE_ID = Purpose.STRIPE_ID


def test_round_trip_and_ciphertext_hides_the_value():
    token = crypto.encrypt("cus_ABC123", purpose=STRIPE_ID)
    assert "cus_" not in token
    assert crypto.decrypt(token, purpose=STRIPE_ID) == "cus_ABC123"
    assert crypto.encrypt("cus_ABC123", purpose=STRIPE_ID) != token  # fresh nonce every time


def test_tampered_ciphertext_is_rejected():
    token = crypto.encrypt("sub_XYZ", purpose=STRIPE_ID)
    version, kid, body = token.split(".")
    # A middle character carries 6 full data bits (the last one may be partly padding).
    middle = len(body) // 2
    flipped = body[:middle] + ("A" if body[middle] != "A" else "B") + body[middle + 1 :]
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(f"{version}.{kid}.{flipped}", purpose=STRIPE_ID)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt("garbage", purpose=STRIPE_ID)


def test_rotation_old_key_still_decrypts_new_key_encrypts():
    old = base64.urlsafe_b64decode(crypto.generate_key())
    new = base64.urlsafe_b64decode(crypto.generate_key())
    token = crypto.encrypt("sub_1", purpose=STRIPE_ID, keys=(old,))
    assert crypto.decrypt(token, purpose=STRIPE_ID, keys=(new, old)) == "sub_1"
    assert crypto.needs_rotation(token, keys=(new, old))
    fresh = crypto.encrypt("sub_1", purpose=STRIPE_ID, keys=(new, old))
    assert not crypto.needs_rotation(fresh, keys=(new, old))
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(token, purpose=STRIPE_ID, keys=(new,))


@pytest.mark.parametrize(
    ("made_for", "read_as"),
    [
        (Purpose.STRIPE_ID, Purpose.LOGIN_HANDOFF),
        (Purpose.EVENT_PAYLOAD, Purpose.STRIPE_ID),
        (Purpose.LOGIN_HANDOFF, Purpose.EVENT_PAYLOAD),
    ],
)
def test_a_ciphertext_is_only_accepted_for_its_own_purpose(made_for, read_as):
    token = crypto.encrypt("value", purpose=made_for)
    assert crypto.decrypt(token, purpose=made_for) == "value"
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(token, purpose=read_as)


def test_a_stripe_id_ciphertext_cannot_be_passed_off_as_a_login_handoff():
    # The same key seals both; without the purpose in the associated data, a value of the
    # right shape sealed as a Stripe id (or event) would redeem as a login.
    forged = crypto.encrypt(
        json.dumps({"t": "someone-elses-session", "exp": time.time() + 60, "n": "abc"}),
        purpose=Purpose.STRIPE_ID,
    )
    with pytest.raises(session_cookie.InvalidHandoff):
        session_cookie.redeem_handoff(forged)
    genuine = session_cookie.make_handoff("my-session")
    assert session_cookie.redeem_handoff(genuine) == "my-session"


def test_first_release_ciphertexts_read_where_stored_never_as_a_handoff():
    key = base64.urlsafe_b64decode(crypto.generate_key())
    old = legacy_v1("sub_OLD", key)
    assert crypto.decrypt(old, purpose=Purpose.STRIPE_ID, keys=(key,)) == "sub_OLD"
    assert crypto.needs_rotation(old, keys=(key,))  # the rotation command rewrites it
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(old, purpose=Purpose.LOGIN_HANDOFF, keys=(key,))


def test_blind_index_is_stable_and_keyed():
    assert crypto.blind_index("sub_1") == crypto.blind_index("sub_1")
    assert crypto.blind_index("sub_1") != crypto.blind_index("sub_2")
    assert "sub_1" not in crypto.blind_index("sub_1")


def test_blind_index_has_its_own_key_not_the_session_secret(settings_env):
    before = crypto.blind_index("sub_1")
    settings_env(APP_SECRET_KEY="another-session-signing-secret-0123456789abc")
    assert crypto.blind_index("sub_1") == before  # not derived from the JWT secret
    settings_env(APP_BLIND_INDEX_KEY=crypto.generate_key())
    assert crypto.blind_index("sub_1") != before


def test_lookups_match_under_every_configured_index_key(settings_env):
    old = crypto.get_settings().app_blind_index_key.get_secret_value()
    under_old = crypto.blind_index("cus_1")
    settings_env(APP_BLIND_INDEX_KEY=f"{crypto.generate_key()},{old}")
    current, previous = crypto.blind_indexes("cus_1")
    assert crypto.blind_index("cus_1") == current != under_old
    assert previous == under_old


def test_the_legacy_index_key_reproduces_the_first_release_index(settings_env):
    secret = "first-release-secret-key-0123456789-abcdefghij"
    # What the first release computed: HMAC under HKDF(APP_SECRET_KEY, "stripe-id-blind-index").
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"stripe-id-blind-index"
    ).derive(secret.encode())
    expected = hmac.new(derived, b"sub_1", hashlib.sha256).hexdigest()
    settings_env(APP_BLIND_INDEX_KEY=crypto.legacy_index_key(secret))
    assert crypto.blind_index("sub_1") == expected


def test_the_legacy_index_key_prints_under_a_production_config_missing_that_key(
    monkeypatch, capsys
):
    """The upgrade step's command runs where the app itself would refuse to start: in
    production without APP_BLIND_INDEX_KEY, which is what it prints the value for."""
    from subscription_app import rotate_keys

    secret = "s" * 48
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("APP_URL", "https://billing.example.org")
    monkeypatch.setenv("APP_SECRET_KEY", secret)
    monkeypatch.delenv("APP_BLIND_INDEX_KEY", raising=False)
    assert rotate_keys.main(["--print-legacy-index-key"]) == 0
    assert capsys.readouterr().out.strip() == crypto.legacy_index_key(secret)
    # Run where the deployment's key is not set: no plausible wrong key.
    monkeypatch.delenv("APP_SECRET_KEY")
    assert rotate_keys.main(["--print-legacy-index-key"]) == 2
    assert capsys.readouterr().out == ""
