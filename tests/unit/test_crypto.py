"""Encryption of Stripe IDs and the blind index."""

import pytest

from subscription_app import crypto


def test_round_trip_and_ciphertext_hides_the_value():
    token = crypto.encrypt("cus_ABC123")
    assert "cus_" not in token
    assert crypto.decrypt(token) == "cus_ABC123"
    assert crypto.encrypt("cus_ABC123") != token  # fresh nonce every time


def test_tampered_ciphertext_is_rejected():
    token = crypto.encrypt("sub_XYZ")
    version, kid, body = token.split(".")
    # A middle character carries 6 full data bits (the last one may be partly padding).
    middle = len(body) // 2
    flipped = body[:middle] + ("A" if body[middle] != "A" else "B") + body[middle + 1 :]
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(f"{version}.{kid}.{flipped}")
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt("garbage")


def test_rotation_old_key_still_decrypts_new_key_encrypts():
    import base64

    old = base64.urlsafe_b64decode(crypto.generate_key())
    new = base64.urlsafe_b64decode(crypto.generate_key())
    token = crypto.encrypt("sub_1", keys=(old,))
    assert crypto.decrypt(token, keys=(new, old)) == "sub_1"
    assert crypto.needs_rotation(token, keys=(new, old))
    assert not crypto.needs_rotation(crypto.encrypt("sub_1", keys=(new, old)), keys=(new, old))
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(token, keys=(new,))


def test_blind_index_is_stable_and_keyed():
    assert crypto.blind_index("sub_1") == crypto.blind_index("sub_1")
    assert crypto.blind_index("sub_1") != crypto.blind_index("sub_2")
    assert "sub_1" not in crypto.blind_index("sub_1")
