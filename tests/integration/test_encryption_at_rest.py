"""No Stripe id is stored in clear; decryption and key rotation keep everything findable."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from subscription_app import crypto
from subscription_app.api import create_api
from subscription_app.billing import repository
from subscription_app.billing.webhooks import sign
from subscription_app.models import BillingCustomer, Subscription
from subscription_app.rotate_keys import rotate
from tests.conftest import legacy_v1
from tests.integration.conftest import auth_headers, event_body, subscribe, subscription_object

FORBIDDEN = (b"cus_", b"sub_", b"pm_")


def all_stored_bytes(engine, url: str) -> bytes:
    """Everything the database holds: the SQLite files, or every PostgreSQL row as text."""
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        return b"".join(
            p.read_bytes() for p in [path, Path(f"{path}-wal"), Path(f"{path}-shm")] if p.exists()
        )
    chunks = []
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            for (text,) in conn.execute(sa.text(f'SELECT t::text FROM "{table}" t')):
                chunks.append(text.encode())
    return b"\n".join(chunks)


@pytest.fixture
def api(db_engine, stripe_env, settings_env):
    settings_env(STRIPE_WEBHOOK_SECRET="whsec_at_rest")
    with TestClient(create_api(), raise_server_exceptions=False) as client:
        yield client


def subscribed(api, make_payment_method, session, email: str) -> tuple[Subscription, str, str]:
    """Subscribe `email` through the API: its row, subscription id and customer id (decrypted)."""
    headers = auth_headers(api, email)
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    row = session.exec(sa.select(Subscription)).scalars().one()
    sub_id = crypto.decrypt(row.stripe_subscription_id_enc, purpose=crypto.Purpose.STRIPE_ID)
    cus_id = crypto.decrypt(row.stripe_customer_id_enc, purpose=crypto.Purpose.STRIPE_ID)
    return row, sub_id, cus_id


def test_full_subscribe_and_cancel_leaves_no_stripe_id_in_clear(
    api, db_engine, empty_database_url, make_payment_method, session, stripe_client
):
    headers = auth_headers(api, "secret@example.com")
    pm = make_payment_method()
    assert subscribe(api, headers, pm).status_code == 200
    session.rollback()
    row = session.exec(sa.select(Subscription)).scalars().one()
    sub_id = crypto.decrypt(row.stripe_subscription_id_enc, purpose=crypto.Purpose.STRIPE_ID)
    cus_id = crypto.decrypt(row.stripe_customer_id_enc, purpose=crypto.Purpose.STRIPE_ID)
    body = event_body("customer.subscription.updated", subscription_object(sub_id, cus_id))
    webhook = api.post(
        "/api/v1/webhooks/stripe",
        content=body.encode(),
        headers={"Stripe-Signature": sign(body, "whsec_at_rest")},
    )
    assert webhook.status_code == 200
    assert (
        api.post(
            "/api/v1/subscriptions/cancel", json={"at_period_end": False}, headers=headers
        ).status_code
        == 200
    )

    stored = all_stored_bytes(db_engine, empty_database_url)
    assert stored, "read nothing from the database"
    for marker in FORBIDDEN:
        assert marker not in stored, f"{marker!r} found in the database"
    assert pm.encode() not in stored

    # Through the app, the ids decrypt to what Stripe has.
    assert sub_id.startswith("sub_") and cus_id.startswith("cus_")
    assert stripe_client.v1.subscriptions.retrieve(sub_id).customer == cus_id
    customer_row = session.exec(sa.select(BillingCustomer)).scalars().one()
    assert (
        crypto.decrypt(customer_row.stripe_customer_id_enc, purpose=crypto.Purpose.STRIPE_ID)
        == cus_id
    )


def test_rotation_rekeys_every_row_and_lookups_still_work(
    api, make_payment_method, session, settings_env
):
    row, sub_id, _ = subscribed(api, make_payment_method, session, "rotate@example.com")
    user_id = row.user_id
    old_key = crypto.get_settings().app_encryption_keys.get_secret_value()
    new_key = crypto.generate_key()
    settings_env(APP_ENCRYPTION_KEYS=f"{new_key},{old_key}")

    # Interrupted part-way (batches of one row; the second batch fails)...
    calls = []

    def interrupt(table, last_id, done):
        calls.append(table)
        if len(calls) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rotate(batch_size=1, progress=interrupt)
    # ... and run again: it finishes the job.
    rotate(batch_size=1)
    assert sum(rotate().values()) == 0  # nothing left to do

    settings_env(APP_ENCRYPTION_KEYS=new_key)  # old key gone: everything must still decrypt
    new_id = crypto.key_id(base64.urlsafe_b64decode(new_key))
    session.rollback()  # end the read snapshot: see what other connections committed
    for model, columns in [
        (BillingCustomer, ["stripe_customer_id_enc"]),
        (Subscription, ["stripe_customer_id_enc", "stripe_subscription_id_enc"]),
    ]:
        for stored in session.exec(sa.select(model)).scalars():
            for column in columns:
                assert getattr(stored, column).split(".")[1] == new_id
                crypto.decrypt(getattr(stored, column), purpose=crypto.Purpose.STRIPE_ID)
    # A webhook naming the subscription still finds its row.
    assert repository.user_id_for_subscription(session, sub_id) == user_id


def test_rotation_rehashes_the_blind_index_and_lookups_never_stop(
    api, make_payment_method, session, settings_env
):
    row, sub_id, cus_id = subscribed(api, make_payment_method, session, "rehash@example.com")
    user_id = row.user_id
    old_key = crypto.get_settings().app_blind_index_key.get_secret_value()
    old_hash = crypto.blind_index(sub_id)
    new_key = crypto.generate_key()
    settings_env(APP_BLIND_INDEX_KEY=f"{new_key},{old_key}")

    # Before re-hashing, rows still carry the old hash and are found through it.
    assert repository.user_id_for_subscription(session, sub_id) == user_id
    assert repository.user_id_for_customer(session, cus_id) == user_id

    counts = rotate(batch_size=1)
    assert counts["billing_customer"] == 1 and counts["subscription"] == 1
    assert sum(rotate().values()) == 0  # nothing left to do

    settings_env(APP_BLIND_INDEX_KEY=new_key)  # the old index key gone
    session.rollback()
    stored = session.exec(sa.select(Subscription)).scalars().one()
    assert stored.stripe_subscription_id_hash == crypto.blind_index(sub_id) != old_hash
    assert stored.stripe_customer_id_hash == crypto.blind_index(cus_id)
    customer = session.exec(sa.select(BillingCustomer)).scalars().one()
    assert customer.stripe_customer_id_hash == crypto.blind_index(cus_id)
    assert repository.user_id_for_subscription(session, sub_id) == user_id
    assert repository.user_id_for_customer(session, cus_id) == user_id


def test_rotation_rewrites_first_release_ciphertexts_with_their_purpose(
    api, make_payment_method, session, db_engine
):
    row, sub_id, _ = subscribed(api, make_payment_method, session, "legacy@example.com")
    key = crypto.get_settings().encryption_keys[0]
    legacy = legacy_v1(sub_id, key)
    with db_engine.begin() as conn:
        conn.execute(
            sa.update(Subscription.__table__)
            .where(Subscription.__table__.c.id == row.id)
            .values(stripe_subscription_id_enc=legacy)
        )
    session.rollback()
    assert repository.latest_subscription_id(session, row.user_id) == sub_id  # still readable

    assert rotate()["subscription"] == 1
    session.rollback()
    rewritten = session.exec(sa.select(Subscription)).scalars().one().stripe_subscription_id_enc
    assert rewritten.startswith("v2.")
    assert crypto.decrypt(rewritten, purpose=crypto.Purpose.STRIPE_ID) == sub_id
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(rewritten, purpose=crypto.Purpose.LOGIN_HANDOFF)


@pytest.mark.parametrize("rotated", ["APP_ENCRYPTION_KEYS", "APP_BLIND_INDEX_KEY"])
def test_rotation_never_puts_back_a_customer_the_app_replaced_meanwhile(
    api, make_payment_method, session, settings_env, db_engine, monkeypatch, rotated
):
    """The app replaces a deleted customer between rotation reading the row and writing it:
    the new customer stays linked, under the new keys, and is found by its id."""
    from sqlmodel import Session

    from subscription_app import rotate_keys

    row, _, old_customer = subscribed(api, make_payment_method, session, f"{rotated}@example.com")
    user_id = row.user_id
    old_key = (
        crypto.get_settings().app_encryption_keys
        if rotated == "APP_ENCRYPTION_KEYS"
        else crypto.get_settings().app_blind_index_key
    ).get_secret_value()
    settings_env(**{rotated: f"{crypto.generate_key()},{old_key}"})

    real_rekeyed = rotate_keys._rekeyed
    replaced = []

    def app_writes_meanwhile(stored_row, columns):
        changes = real_rekeyed(stored_row, columns)
        if isinstance(stored_row, BillingCustomer) and not replaced:
            # The app, on its own connection, links a new customer (under the new keys).
            with Session(db_engine) as app_session:
                repository.replace_customer(app_session, user_id, old_customer, "cus_NEW")
                app_session.commit()
            replaced.append(True)
        return changes

    monkeypatch.setattr(rotate_keys, "_rekeyed", app_writes_meanwhile)
    rotate()
    assert replaced

    session.rollback()
    assert repository.customer_id_for_user(session, user_id) == "cus_NEW"
    assert repository.user_id_for_customer(session, "cus_NEW") == user_id
    customer = session.exec(sa.select(BillingCustomer)).scalars().one()
    assert not crypto.needs_rotation(customer.stripe_customer_id_enc)
    assert customer.stripe_customer_id_hash == crypto.blind_index("cus_NEW")


def test_no_stripe_id_reaches_the_logs_at_info(api, make_payment_method, caplog):
    """Our processes log at INFO; the Stripe SDK logs each request's URL at INFO, and those
    URLs name subscriptions and customers."""
    import logging

    caplog.set_level(logging.INFO)  # as the app's processes run (the root logger)
    headers = auth_headers(api, "quiet-logs@example.com")
    assert subscribe(api, headers, make_payment_method()).status_code == 200
    cancelled = api.post(
        "/api/v1/subscriptions/cancel", json={"at_period_end": False}, headers=headers
    )
    assert cancelled.status_code == 200
    assert caplog.records, "nothing was logged at all: the check would prove nothing"
    for marker in ("cus_", "sub_", "pm_", "in_", "pi_"):
        assert marker not in caplog.text, f"{marker!r} logged"
