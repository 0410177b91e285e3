"""The emulator's store index (devtools/stripe_emulator/index.py): no call scans the store.

In this process (``install(None)``, no server, webhooks not sent): the emulator patched
into localstripe, objects built with localstripe's own classes. Spies show what a call
touches: the stored items iterated (a scan of the store), the objects of other customers
read. Then the index against a plain scan of the store, whatever changed it; the state
file with it; and Checkout Sessions expiring when listed.
"""

from __future__ import annotations

import gc
import pickle
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from localstripe import resources as ls

from devtools.stripe_emulator import install
from devtools.stripe_emulator.checkout import CheckoutSession, _sessions
from devtools.stripe_emulator.index import customer_objects, index_of, objects_of
from devtools.stripe_emulator.invoices import _next_number
from devtools.stripe_emulator.persistence import _load_state, _Persistence
from devtools.stripe_emulator.prices import Price

OTHER_CUSTOMERS = 60


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """An empty emulator store in this process; the events it schedules, unsent."""
    install(None)
    ls.store.clear()
    scheduled: list[Any] = []
    monkeypatch.setattr(ls, "schedule_webhook", scheduled.append)
    yield scheduled
    ls.store.clear()


def _plan() -> ls.Plan:
    return ls.Plan(amount=1000, currency="usd", interval="month", product={"name": "Pro"})


def _subscribed_customer(plan: ls.Plan, email: str) -> ls.Customer:
    """A customer with a card and an active subscription (an invoice, a charge...)."""
    customer = ls.Customer._api_create(email=email)
    pm = ls.PaymentMethod._api_create(type="card", card={"token": "tok_visa"})
    ls.PaymentMethod._api_attach(pm.id, customer=customer.id)
    ls.Subscription._api_create(
        customer=customer.id, items=[{"price": plan.id}], default_payment_method=pm.id
    )
    return customer


def _scan(object_type: str, customer: str | None = None) -> list[Any]:
    """What localstripe's scan of the whole store finds."""
    return [
        obj
        for key, obj in dict.items(ls.store)
        if key.startswith(object_type + ":")
        and (customer is None or getattr(obj, "customer", None) == customer)
    ]


class _CountingView:
    def __init__(self, view: Any, spy: _StoreSpy) -> None:
        self._view = view
        self._spy = spy

    def __iter__(self) -> Iterator[Any]:
        for item in self._view:
            self._spy.iterated += 1
            yield item

    def __contains__(self, item: object) -> bool:
        return item in self._view

    def __len__(self) -> int:
        return len(self._view)


class _StoreSpy:
    """Counts the stored entries iterated through ``store.keys/values/items`` or ``iter``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.iterated = 0
        for name in ("keys", "values", "items"):
            monkeypatch.setattr(ls.Store, name, self._view_of(getattr(dict, name)))
        monkeypatch.setattr(
            ls.Store, "__iter__", lambda store: iter(_CountingView(dict.keys(store), self))
        )

    def _view_of(self, method: Any) -> Any:
        return lambda store: _CountingView(method(store), self)


def test_customer_and_subscription_calls_never_iterate_the_store(events, monkeypatch):
    plan = _plan()
    for i in range(OTHER_CUSTOMERS):
        _subscribed_customer(plan, f"other{i}@example.com")
    assert len(ls.store) > 10 * OTHER_CUSTOMERS
    index_of(ls.store)  # built once (after a load it is built then)
    spy = _StoreSpy(monkeypatch)

    customer = ls.Customer._api_create(email="new@example.com")  # customer.created exports it
    assert ls.Customer._api_retrieve(customer.id)._export()["subscriptions"]["data"] == []
    assert spy.iterated == 0, "creating or reading a customer scanned the store"

    pm = ls.PaymentMethod._api_create(type="card", card={"token": "tok_visa"})
    ls.PaymentMethod._api_attach(pm.id, customer=customer.id)
    sub = ls.Subscription._api_create(
        customer=customer.id, items=[{"price": plan.id}], default_payment_method=pm.id
    )
    assert sub.status == "active"
    assert [s.id for s in ls.Customer._api_list_subscriptions(customer.id)._list] == [sub.id]
    assert [
        s.id for s in ls.Subscription._api_list_all("/v1/subscriptions", customer=customer.id)._list
    ] == [sub.id]
    assert [i.id for i in ls.Invoice._api_list_all("/v1/invoices", customer=customer.id)._list] == [
        sub.latest_invoice
    ]
    assert [p.id for p in ls.PaymentMethod._api_list_all("/x", customer=customer.id)._list] == [
        pm.id
    ]
    assert spy.iterated == 0, "a customer's subscription, invoice or card calls scanned the store"

    # Lists of a whole type only go through that type.
    assert len(ls.Customer._api_list_all("/v1/customers", limit=100)._list) == OTHER_CUSTOMERS + 1
    assert len(ls.Plan._api_list_all("/v1/plans")._list) == 1
    assert spy.iterated == 0


@pytest.mark.parametrize(
    ("cls", "list_for"),
    [
        (ls.Subscription, lambda c: ls.Customer._export(c)["subscriptions"]["data"]),
        (
            ls.Subscription,
            lambda c: ls.Subscription._api_list_all("/", customer=c.id, status="all")._list,
        ),
        (ls.Invoice, lambda c: ls.Invoice._api_list_all("/", customer=c.id)._list),
        (ls.PaymentMethod, lambda c: ls.PaymentMethod._api_list_all("/", customer=c.id)._list),
    ],
    ids=["customer-export", "subscriptions", "invoices", "payment-methods"],
)
def test_a_customers_list_reads_no_other_customers_objects(events, monkeypatch, cls, list_for):
    plan = _plan()
    customers = [_subscribed_customer(plan, f"c{i}@example.com") for i in range(OTHER_CUSTOMERS)]
    target = customers[OTHER_CUSTOMERS // 2]
    own = {id(obj) for obj in _scan(cls.object, target.id)}
    assert own and len(_scan(cls.object)) >= OTHER_CUSTOMERS

    touched: set[int] = set()

    def spying(self: Any, name: str) -> Any:
        touched.add(id(self))
        return object.__getattribute__(self, name)

    with monkeypatch.context() as spied:
        spied.setattr(cls, "__getattribute__", spying)
        listed = list_for(target)

    assert len(listed) == len(own)
    assert touched <= own, f"listing one customer's {cls.object}s read other customers' ones"


class _Thing(ls.StripeObject):
    """A stored object of a type of its own, whose customer the test changes at will."""

    object = "test_index_thing"
    _id_prefix = "thg_"

    def __init__(self, customer: str | None, id: str | None = None) -> None:
        super().__init__(id)
        self.customer = customer


def _assert_index_matches_a_scan(customers: list[str]) -> None:
    for object_type in (_Thing.object, "other_type"):
        assert objects_of(object_type) == _scan(object_type)
        for customer in customers:
            assert customer_objects(object_type, customer) == _scan(object_type, customer)
    listed = _Thing._api_list_all("/things")._list
    assert listed == _scan(_Thing.object)


def test_the_index_matches_a_scan_of_the_store_whatever_changes_it(events):
    rng = random.Random(12)
    customers = ["cus_a", "cus_b", "cus_c"]

    def thing() -> _Thing:
        # Some ids with a colon (a key "type:id:more" is still of its type).
        return _Thing(
            rng.choice([*customers, None]),
            id=f"thg_{rng.randrange(10**9)}:x" if rng.random() < 0.1 else None,
        )

    def stored() -> list[str]:
        return [k for k in dict.keys(ls.store) if k.startswith(_Thing.object + ":")]

    ls.store["balance"] = object()  # a key of no type, as localstripe's Balance
    for step in range(600):
        things = stored()
        action = rng.randrange(11)
        if action <= 2 or not things:
            thing()
        elif action == 3:  # a customer changes (payment method attached, session paid...)
            ls.store[rng.choice(things)].customer = rng.choice([*customers, None, ""])
        elif action == 4:
            del ls.store[rng.choice(things)]
        elif action == 5:
            ls.store.pop(rng.choice(things))
            assert ls.store.pop("missing", "default") == "default"
        elif action == 6:  # replaced under the same key: keeps its place
            key = rng.choice(things)
            replacement = object.__new__(_Thing)
            replacement.id = key.split(":", 1)[1]
            replacement.customer = rng.choice(customers)
            ls.store[key] = replacement
        elif action == 7:
            key = rng.choice(things)
            other = dict(ls.store)
            ls.store.clear()
            assert objects_of(_Thing.object) == []
            ls.store.update(other)
            ls.store.setdefault(key, None)
            ls.store.setdefault("other_type:1", _Thing.__new__(_Thing))
        elif action == 8:
            ls.store |= {f"other_type:{step}": object()}
        elif action == 9 and step % 50 == 0:
            ls.store.popitem()
        else:
            objects_of(_Thing.object)  # (re)built here or kept up to date from here
        _assert_index_matches_a_scan(customers)


def test_state_files_old_and_new_load_indexed_and_hold_no_index(events, tmp_path, monkeypatch):
    plan = _plan()
    customers = [_subscribed_customer(plan, f"c{i}@example.com") for i in range(5)]
    index_of(ls.store)
    expected = {
        t: [o.id for o in _scan(t)] for t in ("customer", "subscription", "invoice", "event")
    }

    saved = pickle.dumps(ls.store, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"_emulator_index" not in saved
    unpickled = pickle.loads(saved)  # noqa: S301 (our own pickle)
    assert type(unpickled) is ls.Store and vars(unpickled) == {}
    assert dict(unpickled).keys() == dict(ls.store).keys()

    # A state file of today (a Store) and of older versions (a plain dict).
    for name, contents in (("store", saved), ("dict", pickle.dumps(dict(ls.store)))):
        path = tmp_path / f"{name}.pickle"
        path.write_bytes(contents)
        ls.store.clear()
        monkeypatch.setattr(_Persistence, "path", str(path))
        try:
            _load_state(ls.store)
        finally:
            gc.unfreeze()  # the server freezes what it loaded; not this test process
        assert {t: [o.id for o in objects_of(t)] for t in expected} == expected
        for customer in customers:
            found = ls.Customer._api_retrieve(customer.id)._export()["subscriptions"]["data"]
            assert [s["id"] for s in found] == [s.id for s in _scan("subscription", customer.id)]


def test_listing_sessions_expires_every_session_due_in_store_order(events):
    price = Price(_plan())
    now = int(time.time())

    def session(customer: str, expires_at: int) -> CheckoutSession:
        return CheckoutSession(
            price=price,
            quantity=1,
            customer=customer,
            customer_email=None,
            client_reference_id=None,
            metadata={},
            subscription_data={},
            success_url="http://localhost/done",
            cancel_url=None,
            expires_at=expires_at,
        )

    # Created in this order; due at other times (the latest due first).
    due = [
        session("cus_other", now - 10),
        session("cus_mine", now - 30),
        session("cus_x", now - 20),
    ]
    later = [session("cus_mine", now + 3600), session("cus_other", now + 3600)]
    assert [s.status for s in due + later] == ["open"] * 5

    events.clear()
    mine = _sessions("cus_mine")
    assert mine == [due[1], later[0]]
    assert [s.status for s in due] == ["expired"] * 3
    assert [s.status for s in later] == ["open"] * 2
    expired = [e.data["object"]["id"] for e in events if e.type == "checkout.session.expired"]
    assert expired == [s.id for s in due]

    events.clear()
    assert _sessions() == due + later  # nothing due any more: nothing else happens
    assert events == []

    # After a reset, sessions stored since are tracked again.
    ls.store.clear()
    fresh = session("cus_mine", now - 1)
    assert _sessions("cus_mine") == [fresh] and fresh.status == "expired"


def test_invoice_numbers_follow_the_highest_stored_whatever_changes(events):
    rng = random.Random(7)

    def scanned_next() -> str:
        numbers = [getattr(i, "number", None) for i in _scan("invoice")]
        valid = [
            int(n[4:])
            for n in numbers
            if isinstance(n, str) and n[:4] == "EMU-" and n[4:].isdigit()
        ]
        return f"EMU-{max(valid, default=0) + 1:04d}"

    def number() -> str | None:
        return rng.choice([None, "EMU-12a", "X-0009", f"EMU-{rng.randrange(1, 60):04d}"])

    def invoice(id: str) -> ls.Invoice:
        made = object.__new__(ls.Invoice)  # localstripe's Invoice, none of its side effects
        made.id = id
        return made

    for step in range(500):
        stored = [k for k in dict.keys(ls.store) if k.startswith("invoice:")]
        action = rng.randrange(8)
        if action <= 1 or not stored:
            made = invoice(f"in_t{step}")
            ls.store["invoice:" + made.id] = made
            made.number = number()
        elif action <= 3:  # numbered (finalized), or changed by an update
            ls.store[rng.choice(stored)].number = number()
        elif action == 4:
            del ls.store[rng.choice(stored)]
        elif action == 5:  # another object under the same key
            key = rng.choice(stored)
            replacement = invoice(key.split(":", 1)[1])
            replacement.number = number()
            ls.store[key] = replacement
        elif action == 6 and step % 40 == 0:
            ls.store.clear()
        if rng.random() < 0.8:  # and sometimes not asked for a while
            assert _next_number() == scanned_next()
    assert _next_number() == scanned_next()
