"""`make resync` against the emulator: repairing our rows when webhooks never arrived.

No webhook endpoint is registered with the emulator here, so every change made directly in
Stripe is one our rows never hear about: exactly the situation the command exists for.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import stripe
from fastapi.testclient import TestClient
from sqlmodel import Session, col, func, select

from subscription_app import accounts, crypto, db, locks
from subscription_app.api import create_api
from subscription_app.billing import inbox, processor, repository, sync, webhooks
from subscription_app.billing.client import get_client
from subscription_app.billing.reader import SubscriptionSnapshot
from subscription_app.billing.resync import main, resync
from subscription_app.models import BillingCustomer, Subscription, User
from tests.conftest import stripe_fixture
from tests.integration.conftest import auth_headers, subscribe


@pytest.fixture
def api(db_engine, stripe_env):
    with TestClient(create_api(), raise_server_exceptions=False) as client:
        yield client


def subscribed(api, session: Session, stripe_client, make_payment_method, email: str):
    """Subscribe `email` through the API; (user id, Stripe subscription id from Stripe)."""
    assert subscribe(api, auth_headers(api, email), make_payment_method()).status_code == 200
    session.rollback()
    user_id = session.exec(select(User.id).where(User.email == email)).one()
    customer_id = repository.customer_id_for_user(session, user_id)
    listed = stripe_client.v1.subscriptions.list(
        params={"customer": customer_id, "status": "all"}
    ).data
    assert len(listed) == 1
    return user_id, listed[0].id


def row_of(session: Session, subscription_id: str) -> Subscription | None:
    session.rollback()  # a fresh snapshot of what others committed
    return session.exec(
        select(Subscription).where(
            col(Subscription.stripe_subscription_id_hash).in_(crypto.blind_indexes(subscription_id))
        )
    ).first()


def table_contents(session: Session) -> list:
    """Every billing row, as plain values (to prove that nothing was written)."""
    session.rollback()
    return [
        [row.model_dump() for row in session.exec(select(model).order_by(col(model.id))).all()]
        for model in (Subscription, BillingCustomer)
    ]


def stripe_customer_with_subscription(stripe_client, price_id: str, **customer_params):
    """A customer made directly in Stripe (as the dashboard would), with an active subscription."""
    customer = stripe_client.v1.customers.create(params=customer_params)
    card = stripe_client.v1.payment_methods.create(
        params={"type": "card", "card": {"token": "tok_visa"}}
    )
    stripe_client.v1.payment_methods.attach(card.id, params={"customer": customer.id})
    stripe_client.v1.customers.update(
        customer.id, params={"invoice_settings": {"default_payment_method": card.id}}
    )
    made = stripe_client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": price_id}]}
    )
    assert made.status == "active"
    return customer.id, made.id


def register(session: Session, email: str) -> User:
    user = accounts.register_user(session=session, email=email, password="s3cret-pass")
    session.commit()
    return user


def gone_snapshot(customer_id: str) -> SubscriptionSnapshot:
    """A subscription Stripe never had (a restored backup of another account, say)."""
    return SubscriptionSnapshot(
        id=f"sub_gone{uuid.uuid4().hex[:12]}",
        customer_id=customer_id,
        status="active",
        price_id="price_x",
        started_at=None,
        current_period_end=None,
        cancel_at_period_end=False,
        canceled_at=None,
        ended_at=None,
        cancel_at=None,
        latest_invoice_id=None,
        payment=None,
    )


# (a) A cancellation whose webhook never came ----------------------------------------------


def test_a_cancellation_in_stripe_is_applied_once(api, session, stripe_client, make_payment_method):
    user_id, sub_id = subscribed(api, session, stripe_client, make_payment_method, "a@example.com")
    stripe_client.v1.subscriptions.cancel(sub_id)
    assert row_of(session, sub_id).status == "active"  # no webhook: our row never heard

    lines: list[str] = []
    report = resync(progress=lines.append)

    row = row_of(session, sub_id)
    assert row.status == "canceled" and row.ended_at is not None and row.user_id == user_id
    assert (report.seen, report.updated, report.unchanged, report.not_ours) == (1, 1, 0, 0)
    assert (report.errors, report.unknown_to_stripe, report.customers_relinked) == (0, 0, 0)
    assert f"[1] sub_…{sub_id[-4:]} canceled → updated" in lines
    assert not any(sub_id in line for line in lines)  # ids are masked in the output

    # Idempotent: a second run finds nothing to do and writes nothing.
    before = table_contents(session)
    again = resync()
    assert (again.seen, again.updated, again.unchanged, again.errors) == (1, 0, 1, 0)
    assert table_contents(session) == before


# (b) --dry-run ---------------------------------------------------------------------------


def test_dry_run_reports_the_change_and_writes_nothing(
    api, session, stripe_client, make_payment_method, stripe_env
):
    _, sub_id = subscribed(api, session, stripe_client, make_payment_method, "a@example.com")
    stripe_client.v1.subscriptions.cancel(sub_id)
    unlinked = register(session, "b@example.com")
    _, theirs = stripe_customer_with_subscription(
        stripe_client,
        stripe_env["price_id"],
        email="b@example.com",
        metadata={"user_id": str(unlinked.id)},
    )
    before = table_contents(session)

    lines: list[str] = []
    report = resync(dry_run=True, progress=lines.append)

    assert table_contents(session) == before
    assert row_of(session, sub_id).status == "active"
    assert report.dry_run and report.errors == 0
    assert (report.seen, report.updated, report.unchanged, report.customers_relinked) == (
        2,
        2,
        0,
        1,
    )
    assert f"[1] sub_…{sub_id[-4:]} canceled → would update" in lines
    assert any(line.endswith(f"would be linked to user {unlinked.id}") for line in lines)
    assert "Dry run, nothing written" in report.summary()
    assert "2 would be updated" in report.summary()

    # What the dry run announced is what the real run then does.
    real = resync()
    assert (real.seen, real.updated, real.unchanged, real.customers_relinked) == (2, 2, 0, 1)
    assert row_of(session, sub_id).status == "canceled"
    assert row_of(session, theirs).user_id == unlinked.id
    # And once repaired, a dry run has nothing left to announce.
    after = resync(dry_run=True)
    assert (after.updated, after.unchanged, after.customers_relinked) == (0, 2, 0)


STALE_FIELDS = {
    "status": "past_due",  # e.g. invoice.paid after a failed payment never arrived
    "cancel_at_period_end": True,
    "current_period_end": datetime(2001, 1, 1, tzinfo=UTC),
    "started_at": datetime(2001, 1, 1, tzinfo=UTC),
    "canceled_at": datetime(2001, 1, 1, tzinfo=UTC),
    "ended_at": datetime(2001, 1, 1, tzinfo=UTC),
    "price_id": "price_old",
    "our_plan": False,
    "activated": False,
    "payment_retrying": False,  # only a past-due one has it
    "cancel_at": datetime(2001, 1, 1, tzinfo=UTC),
}


def test_dry_run_sees_every_field_the_real_run_repairs(
    api, session, stripe_client, make_payment_method
):
    _, sub_id = subscribed(api, session, stripe_client, make_payment_method, "a@example.com")
    for name, stale in STALE_FIELDS.items():
        row = row_of(session, sub_id)
        right = getattr(row, name)
        setattr(row, name, stale)  # our row missed exactly this one change
        session.add(row)
        session.commit()
        assert resync(dry_run=True).updated == 1, name
        assert getattr(row_of(session, sub_id), name) == stale
        assert resync().updated == 1, name
        assert getattr(row_of(session, sub_id), name) == right
        assert resync(dry_run=True).updated == 0, name


# (c) Customers linked by their metadata ----------------------------------------------------


def test_a_customer_made_in_stripe_is_linked_by_its_metadata_and_its_subscription_recorded(
    api, session, stripe_client, make_payment_method, stripe_env
):
    price_id = stripe_env["price_id"]
    linked_id, _ = subscribed(api, session, stripe_client, make_payment_method, "a@example.com")
    user = register(session, "b@example.com")
    customer_id, earlier = stripe_customer_with_subscription(
        stripe_client, price_id, metadata={"user_id": str(user.id)}
    )
    stripe_client.v1.subscriptions.cancel(earlier)  # their history is recorded too
    sub_id = stripe_client.v1.subscriptions.create(
        params={"customer": customer_id, "items": [{"price": price_id}]}
    ).id
    # Reported, never linked: a user we do not have, a user already linked elsewhere, another
    # person's email, a customer nobody here owns.
    _, unknown_users = stripe_customer_with_subscription(
        stripe_client, price_id, metadata={"user_id": "987654"}
    )
    stripe_client.v1.customers.create(params={"metadata": {"user_id": str(linked_id)}})
    other = register(session, "c@example.com")
    stripe_client.v1.customers.create(
        params={"email": "someone@else.example", "metadata": {"user_id": str(other.id)}}
    )
    _, strangers = stripe_customer_with_subscription(stripe_client, price_id, email="x@y.example")
    assert row_of(session, sub_id) is None

    lines: list[str] = []
    report = resync(progress=lines.append)

    assert repository.customer_id_for_user(session, user.id) == customer_id
    row = row_of(session, sub_id)
    assert row is not None and row.user_id == user.id and row.status == "active"
    assert report.customers_relinked == 1
    assert report.customers_not_linked == 3
    assert (
        row_of(session, earlier).status == "canceled"
        and row_of(session, earlier).user_id == user.id
    )
    assert (report.seen, report.updated, report.unchanged, report.not_ours) == (5, 2, 1, 2)
    assert report.errors == 0
    assert row_of(session, unknown_users) is None and row_of(session, strangers) is None
    assert repository.customer_id_for_user(session, other.id) is None
    notes = "\n".join(report.notes)
    assert "names user 987654, who is unknown" in notes
    assert f"names user {linked_id}, who is linked to customer cus_…" in notes
    assert f"names user {other.id}, whose email differs" in notes
    assert session.exec(select(func.count()).select_from(BillingCustomer)).one() == 2
    assert not any(customer_id in line or sub_id in line for line in lines)

    again = resync()
    assert (again.customers_relinked, again.updated, again.customers_not_linked) == (0, 0, 3)


# (d) Local records Stripe does not know ----------------------------------------------------


def test_local_records_stripe_does_not_know_are_reported_and_kept(
    api, session, stripe_client, make_payment_method, capsys
):
    subscribed(api, session, stripe_client, make_payment_method, "a@example.com")
    # Someone whose only row names a subscription Stripe never had.
    user_id = register(session, "ghost@example.com").id
    ghost = gone_snapshot("cus_gone0000000000")
    repository.apply_snapshot(session, user_id=user_id, snapshot=ghost, our_plan=True)
    # One customer that never existed in Stripe, one deleted there.
    never = register(session, "never@example.com")
    repository.save_customer(session, never.id, f"cus_gone{uuid.uuid4().hex[:10]}")
    deleted = register(session, "deleted@example.com")
    deleted_customer = stripe_client.v1.customers.create(params={"email": "deleted@example.com"})
    repository.save_customer(session, deleted.id, deleted_customer.id)
    session.commit()
    stripe_client.v1.customers.delete(deleted_customer.id)

    report = resync()

    assert report.unknown_to_stripe == 1 and report.customers_gone == 2
    assert report.errors == 0 and report.complete
    assert (report.seen, report.unchanged) == (1, 1)  # the real one was still checked
    assert row_of(session, ghost.id).status == "active"  # reported, not touched
    assert any(f"sub_…{ghost.id[-4:]} of user {user_id}" in note for note in report.notes)
    assert sum("gone from Stripe" in note for note in report.notes) == 2
    assert session.exec(select(func.count()).select_from(BillingCustomer)).one() == 3

    # From the command line: no crash, and these are findings, not errors.
    capsys.readouterr()
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert "1 unknown to Stripe" in out and "2 customer(s) gone from Stripe" in out
    assert "unknown to Stripe; left as it is" in err
    assert ghost.id not in out + err


class StripeAnswersDeleted:
    """The app's client, except that retrieving `deleted_id` answers as real Stripe does for
    a deleted customer (the emulator answers 404 instead)."""

    def __init__(self, deleted_id: str) -> None:
        real = get_client()
        self.v1 = SimpleNamespace(subscriptions=real.v1.subscriptions, customers=self)
        self._customers = real.v1.customers
        self._deleted_id = deleted_id

    def list(self, *args, **kwargs):
        return self._customers.list(*args, **kwargs)

    def retrieve(self, customer_id, *args, **kwargs):
        if customer_id == self._deleted_id:
            return stripe.StripeObject.construct_from(
                {"id": customer_id, "object": "customer", "deleted": True}, "sk_test_x"
            )
        return self._customers.retrieve(customer_id, *args, **kwargs)


def test_a_customer_stripe_answers_as_deleted_is_reported_gone(db_engine, stripe_env, session):
    user = register(session, "deleted@example.com")
    repository.save_customer(session, user.id, "cus_deleted00000001")
    session.commit()

    report = resync(client=StripeAnswersDeleted("cus_deleted00000001"))

    assert (report.customers_gone, report.errors) == (1, 0)
    assert report.notes == [f"customer cus_…0001 of user {user.id} → gone from Stripe"]


# (e) Rate limits -------------------------------------------------------------------------


def rate_limit_error() -> stripe.RateLimitError:
    return stripe.RateLimitError("Too many requests", http_status=429, code="rate_limit")


class RateLimitedList:
    """A list whose auto-paging stops with a rate limit after `after` items (once)."""

    def __init__(self, listed, after: int, budget: dict) -> None:
        self.listed = listed
        self.after = after
        self.budget = budget

    def auto_paging_iter(self):
        for number, item in enumerate(self.listed.auto_paging_iter()):
            if number == self.after and self.budget["mid_list"] > 0:
                self.budget["mid_list"] -= 1
                raise rate_limit_error()
            yield item


class RateLimitedService:
    """One of the client's services whose `list` and `retrieve` are rate-limited first."""

    def __init__(self, service, failures: dict[str, int], mid_list: int, calls: list) -> None:
        self.service = service
        self.left = {"list": 0, "retrieve": 0, **failures}
        self.budget = {"mid_list": mid_list}
        self.calls = calls

    def _call(self, method: str, *args, **kwargs):
        self.calls.append((method, kwargs.get("params") or {}))
        if self.left[method] > 0:
            self.left[method] -= 1
            raise rate_limit_error()
        return getattr(self.service, method)(*args, **kwargs)

    def list(self, *args, **kwargs):
        return RateLimitedList(self._call("list", *args, **kwargs), 1, self.budget)

    def retrieve(self, *args, **kwargs):
        return self._call("retrieve", *args, **kwargs)


def rate_limited_client(*, listing: int = 0, retrieving: int = 0, mid_list: int = 0):
    """The app's client, refusing each `list` call `listing` times and each `retrieve` call
    `retrieving` times in a row (then answering), and breaking off `mid_list` listings once."""
    real = get_client()
    calls: list = []
    failures = {"list": listing, "retrieve": retrieving}
    v1 = SimpleNamespace(
        subscriptions=RateLimitedService(real.v1.subscriptions, failures, mid_list, calls),
        customers=RateLimitedService(real.v1.customers, failures, mid_list, calls),
    )
    return SimpleNamespace(v1=v1, calls=calls)


def test_rate_limits_are_waited_out_with_growing_pauses(
    api, session, stripe_client, make_payment_method
):
    _, sub_id = subscribed(api, session, stripe_client, make_payment_method, "a@example.com")
    stripe_client.v1.subscriptions.cancel(sub_id)
    ghost_owner = register(session, "ghost@example.com").id
    repository.apply_snapshot(
        session, user_id=ghost_owner, snapshot=gone_snapshot("cus_x"), our_plan=True
    )
    never = register(session, "never@example.com")
    repository.save_customer(session, never.id, "cus_gone0000000001")
    session.commit()
    row_of(session, sub_id)
    slept: list[float] = []

    # Customers listed, subscriptions listed, the ghost and the missing customer retrieved:
    # each of the four calls is refused twice, then answered.
    report = resync(client=rate_limited_client(listing=2, retrieving=2), sleep=slept.append)

    assert slept == [0.5, 1.0] * 4
    assert report.errors == 0 and report.complete
    assert (report.seen, report.updated, report.unknown_to_stripe, report.customers_gone) == (
        1,
        1,
        1,
        1,
    )
    assert row_of(session, sub_id).status == "canceled"


def test_a_rate_limit_in_the_middle_of_a_listing_resumes_after_the_last_item(
    api, session, stripe_client, make_payment_method
):
    for email in ("a@example.com", "b@example.com", "c@example.com"):
        subscribed(api, session, stripe_client, make_payment_method, email)
    slept: list[float] = []
    client = rate_limited_client(mid_list=1)

    report = resync(client=client, sleep=slept.append)

    assert slept == [0.5, 0.5]  # once in the customers' listing, once in the subscriptions'
    assert (report.seen, report.unchanged, report.errors) == (3, 3, 0)  # none twice
    resumed = [params for method, params in client.calls if params.get("starting_after")]
    assert len(resumed) == 2


def test_a_rate_limit_that_does_not_end_is_an_error_not_a_hang(
    api, session, stripe_client, make_payment_method
):
    subscribed(api, session, stripe_client, make_payment_method, "a@example.com")
    slept: list[float] = []

    report = resync(client=rate_limited_client(listing=1000), sleep=slept.append)

    assert slept == [0.5, 1.0, 2.0, 4.0, 8.0]  # six tries, capped pauses
    assert report.errors == 1 and not report.complete
    assert report.seen == 0 and report.unknown_to_stripe == 0  # nothing judged on half a list
    assert "RateLimitError" in report.notes[-1]


def test_a_subscription_stripe_cannot_be_asked_about_is_an_error_not_unknown(
    api, session, stripe_client, make_payment_method
):
    _, sub_id = subscribed(api, session, stripe_client, make_payment_method, "a@example.com")
    stripe_client.v1.subscriptions.cancel(sub_id)
    ghost_owner = register(session, "ghost@example.com").id
    ghost = gone_snapshot("cus_x")
    repository.apply_snapshot(session, user_id=ghost_owner, snapshot=ghost, our_plan=True)
    session.commit()
    slept: list[float] = []

    report = resync(client=rate_limited_client(retrieving=1000), sleep=slept.append)

    assert slept == [0.5, 1.0, 2.0, 4.0, 8.0]
    # Rate-limited for good: an error (exit 1), never a claim that Stripe lacks it.
    assert report.errors == 1 and report.unknown_to_stripe == 0 and report.complete
    assert f"sub_…{ghost.id[-4:]}" in report.notes[-1] and "RateLimitError" in report.notes[-1]
    assert row_of(session, sub_id).status == "canceled"  # the others were still done


# (f) The command line ----------------------------------------------------------------------


def test_exit_codes(api, session, stripe_client, make_payment_method, monkeypatch, capsys):
    _, first = subscribed(api, session, stripe_client, make_payment_method, "a@example.com")
    _, second = subscribed(api, session, stripe_client, make_payment_method, "b@example.com")
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Resync done: 2 seen, 0 updated, 2 unchanged") and "0 error(s)" in out
    assert f"sub_…{first[-4:]} active → unchanged" in err

    assert main(["--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("Dry run, nothing written: 2 seen")

    # One subscription's lock is held too long elsewhere: counted, and the next one still done.
    stripe_client.v1.subscriptions.cancel(second)
    real_sync = sync.sync_subscription

    def busy_for_first(*, subscription_id, **kwargs):
        if subscription_id == first:
            raise locks.LockTimeout("subscription:…")
        return real_sync(subscription_id=subscription_id, **kwargs)

    monkeypatch.setattr(sync, "sync_subscription", busy_for_first)
    assert main([]) == 1
    out, err = capsys.readouterr()
    assert "1 updated" in out and "1 error(s)" in out
    assert f"sub_…{first[-4:]} active → error: LockTimeout" in err
    assert row_of(session, second).status == "canceled"

    assert main(["--bogus"]) == 2
    assert main(["--dry-run", "extra"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_without_stripe_keys_it_says_so_in_one_line(db_engine, settings_env, capsys):
    from subscription_app.billing import client

    settings_env(STRIPE_SECRET_KEY=None)
    client.get_client.cache_clear()
    try:
        assert main([]) == 2
    finally:
        client.get_client.cache_clear()
    err = capsys.readouterr().err
    assert "resync: STRIPE_SECRET_KEY is not set" in err
    assert "Traceback" not in err


class WebhookRacesTheListing:
    """The app's client, except that right after Stripe answers the subscription listing
    `change()` runs: a change in Stripe (and its webhook applied) that the listing missed."""

    def __init__(self, change) -> None:
        real = get_client()
        self.v1 = SimpleNamespace(subscriptions=self, customers=real.v1.customers)
        self._subscriptions = real.v1.subscriptions
        self._change = change

    def list(self, *args, **kwargs):
        listed = self._subscriptions.list(*args, **kwargs)
        self._change()
        return listed

    def retrieve(self, *args, **kwargs):
        return self._subscriptions.retrieve(*args, **kwargs)


def test_a_stale_listing_never_rolls_back_what_a_webhook_applied(
    api, session, stripe_client, make_payment_method
):
    _, sub_id = subscribed(api, session, stripe_client, make_payment_method, "a@example.com")

    def cancel_and_deliver() -> None:
        stripe_client.v1.subscriptions.cancel(sub_id)
        with Session(db.get_engine()) as webhook_session:
            sync.sync_subscription(session=webhook_session, subscription_id=sub_id)

    report = resync(client=WebhookRacesTheListing(cancel_and_deliver))

    # The listing said "active"; resync re-read Stripe under the lock and kept "canceled".
    assert row_of(session, sub_id).status == "canceled"
    assert (report.seen, report.unchanged, report.errors) == (1, 1, 0)


# (g) Running at once with itself and with the webhook processor ------------------------------


def store_event(event_type: str, obj: dict) -> None:
    """Put a signed event in the inbox, as the webhook endpoint would."""
    envelope = stripe_fixture("event")
    envelope.update(
        id=f"evt_{uuid.uuid4().hex}",
        type=event_type,
        created=int(time.time()),
        data={"object": obj},
    )
    body = json.dumps(envelope, default=str)
    event = webhooks.verify(body.encode(), webhooks.sign(body, "whsec_integration"))
    with Session(db.get_engine()) as session:
        assert inbox.store(session, event)
        session.commit()


def test_two_resyncs_and_the_webhook_processor_at_once_leave_one_correct_row(
    api, session, stripe_client, make_payment_method, stripe_env, monkeypatch
):
    _, sub_id = subscribed(api, session, stripe_client, make_payment_method, "a@example.com")
    canceled = stripe_client.v1.subscriptions.cancel(sub_id)
    user = register(session, "b@example.com")
    customer_id, theirs = stripe_customer_with_subscription(
        stripe_client, stripe_env["price_id"], metadata={"user_id": str(user.id)}
    )
    store_event("customer.subscription.deleted", canceled.to_dict())
    # Both runs find the customer unlinked before either links it: they meet here (the last
    # check before linking), so the race on linking happens every time, not by luck.
    meet = threading.Barrier(2, timeout=5)
    met: set[threading.Thread] = set()
    real_customer_id_for_user = repository.customer_id_for_user

    def customer_id_for_user(session, user_id):
        found = real_customer_id_for_user(session, user_id)
        if threading.current_thread() not in met:  # once per run
            met.add(threading.current_thread())
            with contextlib.suppress(threading.BrokenBarrierError):
                meet.wait()
        return found

    reports: list = []
    batches: list = []
    failures: list[BaseException] = []
    start = threading.Barrier(3)

    def run_resync() -> None:
        try:
            start.wait()
            reports.append(resync())
        except BaseException as exc:
            failures.append(exc)

    def run_processor() -> None:
        try:
            start.wait()
            batches.append(processor.process_batch())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=f) for f in (run_resync, run_resync, run_processor)]
    with monkeypatch.context() as patched:
        patched.setattr(repository, "customer_id_for_user", customer_id_for_user)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert failures == []
    assert len(reports) == 2
    assert [r.errors for r in reports] == [0, 0], [r.notes for r in reports]
    [batch] = batches
    assert (batch.done, batch.failed, batch.retried) == (1, 0, 0)
    # Each of the two changes was applied once, by whoever held the lock first; the others
    # re-read Stripe under the lock and found nothing left to change.
    assert sum(r.updated for r in reports) + len(batch.changed_users) == 2

    session.rollback()
    rows = session.exec(select(Subscription)).all()
    assert len(rows) == 2
    assert row_of(session, sub_id).status == "canceled"
    assert row_of(session, theirs).user_id == user.id
    assert repository.customer_id_for_user(session, user.id) == customer_id
    assert session.exec(select(func.count()).select_from(BillingCustomer)).one() == 2
