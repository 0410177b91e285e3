"""Repair local billing state from Stripe, for when webhooks never arrived.

    python -m subscription_app.billing.resync [--dry-run]      (or: make resync ARGS=--dry-run)

Webhooks are how our rows learn what happens in Stripe. When they stop arriving (the endpoint
was down for longer than Stripe retries, a wrong STRIPE_WEBHOOK_SECRET, a database restored
from a backup) the rows drift. This command walks Stripe and puts them right:

1. Lists every Stripe customer once, and links each customer whose `metadata.user_id` names a
   user of ours who has no customer yet (our own customers are created with that metadata).
2. Lists every subscription (`status=all`) and applies each one of ours through
   `sync.sync_subscription`, the path every webhook takes: it re-reads the subscription under
   its lock and commits, so running this while webhooks arrive is safe, and running it twice
   changes nothing the second time.
3. Reports what Stripe does not know: our subscription rows it does not list (each confirmed
   with a retrieve) and our customers it has deleted. Nothing is ever deleted here.

`--dry-run` reads everything and reports what would change, writing nothing.

Progress goes to stderr, one line per subscription (ids masked: ``sub_…1234``), and a
summary to stdout. Exit code: 0 when no error was counted, 1 when any was, 2 on bad usage or
when Stripe (or the plan's price) is not configured.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import stripe
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from subscription_app import crypto, db, locks
from subscription_app.billing import catalog, repository, sync
from subscription_app.billing.client import get_client
from subscription_app.billing.errors import NotSetUp
from subscription_app.billing.processor import scrub
from subscription_app.billing.reader import SubscriptionSnapshot, read_subscription
from subscription_app.models import BillingCustomer, Subscription, SubscriptionStatus, User

USAGE = "usage: python -m subscription_app.billing.resync [--dry-run]"

# Stripe answers 429 when we call too fast; the SDK does not retry those itself (only when
# Stripe says it should), so we back off: 0.5, 1, 2, 4, 8 s, then give up (six tries).
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
MAX_TRIES = 6
# Local rows are read in batches, each in its own short session (as rotate_keys does).
BATCH_SIZE = 200

# Any of these while handling one subscription or customer is counted, and we go on with the
# next: a Stripe error, a lock another worker held too long, Stripe reporting two open
# subscriptions for one person, an undecryptable row, a database hiccup, a vanished price, a
# status Stripe added after this code was written (ValueError from `SubscriptionStatus`).
_ITEM_ERRORS: tuple[type[BaseException], ...] = (
    stripe.StripeError,
    locks.LockTimeout,
    repository.SecondOpenSubscription,
    crypto.DecryptionError,
    SQLAlchemyError,
    NotSetUp,
    ValueError,
)

_T = TypeVar("_T")
_Listed = TypeVar("_Listed", bound=stripe.StripeObject)
_ID_PREFIX = re.compile(r"^([a-z]+)_")


def mask(stripe_id: str) -> str:
    """A Stripe id fit for logs: its kind and last four characters (``sub_…1234``).

    Enough to find it in the Stripe dashboard, not enough to act on it; full ids never appear
    in our logs (see `processor.scrub`).
    """
    prefix = _ID_PREFIX.match(stripe_id)
    return f"{prefix.group(1) if prefix else ''}_…{stripe_id[-4:]}"


def backoff_seconds(failures: int) -> float:
    """How long to wait after the `failures`-th rate-limited try in a row (1-based)."""
    return min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (failures - 1))


@dataclass
class ResyncReport:
    """What a run found and did (with `dry_run`, what it would have done)."""

    dry_run: bool = False
    seen: int = 0  # subscriptions Stripe listed (or that appeared while we ran)
    updated: int = 0  # our row was created or changed
    unchanged: int = 0
    not_ours: int = 0  # the subscription's customer belongs to no user of ours
    customers_relinked: int = 0
    customers_not_linked: int = 0  # metadata names a user we must not link: reported only
    unknown_to_stripe: int = 0  # our subscription rows Stripe does not have: reported only
    customers_gone: int = 0  # our customers Stripe deleted: reported only
    errors: int = 0
    complete: bool = True  # False: a listing failed, so some checks did not run
    notes: list[str] = field(default_factory=list)  # what to look at, ids masked

    def summary(self) -> str:
        """One line with every count."""
        would = "would be " if self.dry_run else ""
        head = "Dry run, nothing written" if self.dry_run else "Resync done"
        if not self.complete:
            head += " (incomplete: a Stripe listing failed)"
        return (
            f"{head}: {self.seen} seen, {self.updated} {would}updated, "
            f"{self.unchanged} unchanged, {self.not_ours} not ours, "
            f"{self.customers_relinked} customer(s) {would}relinked, "
            f"{self.customers_not_linked} customer(s) not linkable, "
            f"{self.unknown_to_stripe} unknown to Stripe, "
            f"{self.customers_gone} customer(s) gone from Stripe, {self.errors} error(s)"
        )


@dataclass(frozen=True)
class _StripeCustomer:
    """What we need of a Stripe customer."""

    id: str
    gone: bool  # deleted in Stripe, or no such customer
    email: str | None = None
    user_ref: str | None = None  # metadata.user_id, as Stripe has it

    @classmethod
    def read(cls, obj: stripe.StripeObject) -> _StripeCustomer:
        # A dict: a deleted customer (real Stripe) has only id and `deleted`, and a
        # StripeObject raises on a missing attribute.
        data = obj.to_dict()
        metadata = data.get("metadata") or {}
        return cls(
            id=data["id"],
            gone=bool(data.get("deleted")),
            email=data.get("email"),
            user_ref=metadata.get("user_id"),
        )


def _is_missing(exc: stripe.StripeError) -> bool:
    return isinstance(exc, stripe.InvalidRequestError) and exc.code == "resource_missing"


def _why_not_link(session: Session, customer: _StripeCustomer) -> tuple[int | None, str | None]:
    """The user an unlinked customer's metadata names, and why not to link them (or None)."""
    try:
        user_id = int(customer.user_ref or "")
    except ValueError:
        return None, "metadata user_id is not a user id"
    user = session.get(User, user_id)
    if user is None:
        return user_id, f"names user {user_id}, who is unknown"
    if customer.email and customer.email.strip().lower() != user.email:
        return user_id, f"names user {user_id}, whose email differs"
    other = repository.customer_id_for_user(session, user_id)
    if other is not None:
        return user_id, f"names user {user_id}, who is linked to customer {mask(other)}"
    return user_id, None


def _row_for(session: Session, subscription_id: str) -> Subscription | None:
    return session.exec(
        select(Subscription).where(
            col(Subscription.stripe_subscription_id_hash).in_(crypto.blind_indexes(subscription_id))
        )
    ).first()


def _would_change(session: Session, snapshot: SubscriptionSnapshot) -> bool:
    """Whether applying `snapshot` would create or change our row (`apply_snapshot`'s fields)."""
    row = _row_for(session, snapshot.id)
    if row is None:
        return True
    # The rule the write itself applies (sticky once ours, else by price).
    our_plan = sync._is_our_plan(session, snapshot)
    status = SubscriptionStatus(snapshot.status)
    before = (
        row.price_id,
        row.our_plan,
        row.activated,
        row.payment_retrying,
        row.status,
        row.started_at,
        row.current_period_end,
        row.cancel_at_period_end,
        row.cancel_at,
        row.canceled_at,
        row.ended_at,
    )
    after = (
        snapshot.price_id or row.price_id,
        our_plan,
        row.activated or status.is_live,
        sync.payment_retrying(snapshot),  # one read of Stripe, for a past-due one only
        status.value,
        snapshot.started_at,
        snapshot.current_period_end,
        snapshot.cancel_at_period_end,
        snapshot.cancel_at,
        snapshot.canceled_at,
        snapshot.ended_at,
    )
    return before != after


class _Run:
    """One pass. Holds the per-run customer cache and the ids the listing contained."""

    def __init__(
        self,
        *,
        client: stripe.StripeClient,
        dry_run: bool,
        progress: Callable[[str], None] | None,
        sleep: Callable[[float], None],
    ) -> None:
        self.client = client
        self.dry_run = dry_run
        self.progress = progress
        self.sleep = sleep
        self.report = ResyncReport(dry_run=dry_run)
        # Every customer Stripe listed (or we retrieved), by id: one listing, then lookups.
        self.customers: dict[str, _StripeCustomer] = {}
        # Customers already decided this run: the user they are (or would be) linked to, or
        # None. Keeps a dry run consistent and reports each customer once.
        self.decided: dict[str, int | None] = {}
        self.listed_subscriptions: set[str] = set()
        self.number = 0

    # Output ---------------------------------------------------------------------------

    def say(self, line: str) -> None:
        if self.progress:
            self.progress(line)

    def note(self, line: str) -> None:
        self.report.notes.append(line)
        self.say(line)

    def error(self, what: str, exc: BaseException) -> None:
        self.report.errors += 1
        # Stripe's messages name ids ("No such subscription: 'sub_…'"): scrubbed.
        self.note(f"{what} → error: {scrub(f'{type(exc).__name__}: {exc}')}")

    # Stripe calls ---------------------------------------------------------------------

    def retrying(self, call: Callable[[], _T]) -> _T:
        """`call()`, tried again after a growing pause while Stripe rate-limits us."""
        failures = 0
        while True:
            try:
                return call()
            except stripe.RateLimitError:
                failures += 1
                if failures >= MAX_TRIES:
                    raise
                self.sleep(backoff_seconds(failures))

    def listing(
        self, page: Callable[[str | None], stripe.ListObject[_Listed]]
    ) -> Iterator[_Listed]:
        """Every item of a Stripe list. `page(after)` asks for the page after id `after`.

        A rate limit can hit any page's request, inside the SDK's auto-paging iterator, which
        then cannot go on: we wait and start a new listing after the last item we got.
        """
        after: str | None = None
        failures = 0
        while True:
            try:
                for item in page(after).auto_paging_iter():
                    failures = 0
                    after = item["id"]
                    yield item
                return
            except stripe.RateLimitError:
                failures += 1
                if failures >= MAX_TRIES:
                    raise
                self.sleep(backoff_seconds(failures))

    def _customer_page(self, after: str | None) -> stripe.ListObject[stripe.Customer]:
        params: stripe.params.CustomerListParams = {"limit": 100}  # Stripe's largest page
        if after:
            params["starting_after"] = after
        return self.client.v1.customers.list(params=params)

    def _subscription_page(self, after: str | None) -> stripe.ListObject[stripe.Subscription]:
        # status=all: canceled and expired ones too (the default leaves them out), since a
        # missed cancellation is exactly what we are here to repair.
        params: stripe.params.SubscriptionListParams = {"status": "all", "limit": 100}
        if after:
            params["starting_after"] = after
        return self.client.v1.subscriptions.list(params=params)

    def customer(self, customer_id: str) -> _StripeCustomer:
        """A customer from the listing, else retrieved (and remembered).

        Stripe's list leaves deleted customers out, and one may be created while we run.
        """
        known = self.customers.get(customer_id)
        if known is None:
            try:
                obj = self.retrying(lambda: self.client.v1.customers.retrieve(customer_id))
                known = _StripeCustomer.read(obj)
            except stripe.InvalidRequestError as exc:
                if not _is_missing(exc):
                    raise
                known = _StripeCustomer(customer_id, gone=True)
            self.customers[customer_id] = known
        return known

    # Customers --------------------------------------------------------------------------

    def list_customers(self) -> None:
        """Remember every Stripe customer, then link the unlinked ones their metadata names.

        Why one listing rather than a retrieve per customer: a full pass must look at every
        customer we have anyway (is it still in Stripe?), and a page holds 100 of them, so
        this is about a hundred times fewer calls (and rate-limit waits). Only customers the
        listing lacks are retrieved, one by one.
        """
        for obj in self.listing(self._customer_page):
            customer = _StripeCustomer.read(obj)
            self.customers[customer.id] = customer
        with Session(db.get_engine()) as session:
            # One query instead of one per customer: which of the listed ones are linked.
            linked = set(session.exec(select(BillingCustomer.stripe_customer_id_hash)).all())
        for customer in list(self.customers.values()):
            if customer.user_ref is None or customer.gone:
                continue
            if linked.isdisjoint(crypto.blind_indexes(customer.id)):
                try:
                    self.link(customer)
                except _ITEM_ERRORS as exc:
                    self.error(f"customer {mask(customer.id)}", exc)

    def link(self, customer: _StripeCustomer) -> int | None:
        """The user this customer is (or, in a dry run, would be) linked to, or None.

        Links it when its metadata names an existing user who has no customer. A user that
        does not exist, a user linked to another customer, or an email that is not the
        user's is reported and left alone: linking puts a person's billing on an account, so
        we do it only when nothing argues against it.
        """
        if customer.id in self.decided:
            return self.decided[customer.id]
        user_id = self._link(customer)
        self.decided[customer.id] = user_id
        return user_id

    def _link(self, customer: _StripeCustomer) -> int | None:
        if customer.gone or customer.user_ref is None:
            return None
        shown = mask(customer.id)
        with Session(db.get_engine(), expire_on_commit=False) as session:
            already = repository.user_id_for_customer(session, customer.id)
            if already is not None:
                return already
            user_id, problem = _why_not_link(session, customer)
            if user_id is not None and problem is None and not self.dry_run:
                saved = repository.save_customer(session, user_id, customer.id)
                session.commit()
                if saved != customer.id:  # another process linked this user first
                    problem = f"user {user_id} was just linked to customer {mask(saved)}"
        if user_id is None or problem is not None:
            self.report.customers_not_linked += 1
            self.note(f"customer {shown}: {problem}; not linked")
            return None
        self.report.customers_relinked += 1
        verb = "would be linked" if self.dry_run else "linked"
        self.say(f"customer {shown} → {verb} to user {user_id}")
        return user_id

    def check_local_customers(self) -> None:
        """Report our customers Stripe no longer has (deleted there, or never existed)."""
        for row_id, user_id, sealed in _local_rows(
            BillingCustomer, BillingCustomer.stripe_customer_id_enc
        ):
            try:
                customer_id = crypto.decrypt(sealed, purpose=crypto.Purpose.STRIPE_ID)
                gone = self.customer(customer_id).gone
            except _ITEM_ERRORS as exc:
                self.error(f"our customer row {row_id} (user {user_id})", exc)
                continue
            if gone:
                self.report.customers_gone += 1
                self.note(f"customer {mask(customer_id)} of user {user_id} → gone from Stripe")

    # Subscriptions ----------------------------------------------------------------------

    def list_subscriptions(self) -> None:
        """Apply every subscription Stripe lists."""
        for obj in self.listing(self._subscription_page):
            self.apply(obj)

    def apply(self, obj: stripe.StripeObject) -> None:
        """Apply one subscription Stripe gave us (from the listing or a retrieve)."""
        self.number += 1
        snapshot = read_subscription(obj)
        self.listed_subscriptions.add(snapshot.id)
        self.report.seen += 1
        line = f"[{self.number}] {mask(snapshot.id)} {snapshot.status}"
        try:
            outcome = self._apply(snapshot)
        except _ITEM_ERRORS as exc:
            self.error(line, exc)
            return
        self.say(f"{line} → {outcome}")

    def _apply(self, snapshot: SubscriptionSnapshot) -> str:
        with Session(db.get_engine(), expire_on_commit=False) as session:
            owner = sync.owner_of(session, snapshot.id, snapshot.customer_id)
            if owner is None and snapshot.customer_id:
                owner = self.link(self.customer(snapshot.customer_id))
            if owner is None:
                self.report.not_ours += 1
                return "not ours"
            if self.dry_run:
                # What Stripe listed against our row; no lock, no write.
                changed = _would_change(session, snapshot)
            else:
                # The webhooks' own path: re-reads under the lock, applies, commits.
                changed = self.retrying(
                    lambda: sync.sync_subscription(
                        session=session, subscription_id=snapshot.id, user_id=owner
                    )
                ).changed
        if changed:
            self.report.updated += 1
            return "would update" if self.dry_run else "updated"
        self.report.unchanged += 1
        return "unchanged"

    def check_local_subscriptions(self) -> None:
        """Our rows the listing lacked: confirm each with Stripe, report the unknown ones.

        A subscription created after the listing passed its page is applied like the others.
        """
        for row_id, user_id, sealed in _local_rows(
            Subscription, Subscription.stripe_subscription_id_enc
        ):
            try:
                subscription_id = crypto.decrypt(sealed, purpose=crypto.Purpose.STRIPE_ID)
            except crypto.DecryptionError as exc:
                self.error(f"our subscription row {row_id} (user {user_id})", exc)
                continue
            if subscription_id in self.listed_subscriptions:
                continue
            try:
                found = self.retrying(
                    partial(self.client.v1.subscriptions.retrieve, subscription_id)
                )
            except stripe.StripeError as exc:
                if _is_missing(exc):
                    self.report.unknown_to_stripe += 1
                    self.note(
                        f"{mask(subscription_id)} of user {user_id} (our row {row_id}) "
                        "→ unknown to Stripe; left as it is"
                    )
                else:
                    self.error(f"{mask(subscription_id)} (our row {row_id})", exc)
                continue
            self.apply(found)


def _local_rows(
    model: type[BillingCustomer] | type[Subscription], sealed: Any
) -> Iterator[tuple[int, int, str]]:
    """(row id, user id, sealed Stripe id) of every row, in batches of short sessions."""
    last_id = 0
    while True:
        with Session(db.get_engine()) as session:
            rows = session.exec(
                select(model.id, model.user_id, sealed)
                .where(col(model.id) > last_id)
                .order_by(col(model.id))
                .limit(BATCH_SIZE)
            ).all()
        if not rows:
            return
        for row_id, user_id, value in rows:
            if row_id is not None:  # always set on a stored row; this tells the type checker
                last_id = row_id
                yield row_id, user_id, value


def resync(
    *,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
    client: stripe.StripeClient | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ResyncReport:
    """Bring our customers and subscriptions in line with Stripe; see the module docstring.

    `client` is used for listing and confirming (tests pass a wrapper); every write goes
    through `sync.sync_subscription`, which reads with the app's client. `sleep` waits out
    Stripe's rate limits. Errors are counted in the report, never raised, except:

    Raises:
        StripeNotConfigured: no STRIPE_SECRET_KEY.
        NotSetUp: the plan's price cannot be found (without it, no subscription can be told
            to be ours or not).
    """
    run = _Run(client=client or get_client(), dry_run=dry_run, progress=progress, sleep=sleep)
    report = run.report
    try:
        # Checked once up front, so a missing price is one clear message, not an error per
        # subscription. Cached by catalog, so the syncs below do not ask again.
        run.retrying(catalog.default_price_id)
        what = "Checking (dry run)" if dry_run else "Repairing"
        run.say(f"{what} local customers and subscriptions against Stripe...")
        run.list_customers()
        run.list_subscriptions()
    except stripe.StripeError as exc:
        # Without a full listing nothing can be called unknown to Stripe: stop here.
        report.complete = False
        run.error("asking Stripe", exc)
        return report
    run.check_local_subscriptions()
    run.check_local_customers()
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 all well, 1 errors were counted, 2 bad usage or no Stripe."""
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if args not in ([], ["--dry-run"]):
        print(USAGE, file=sys.stderr)
        return 2
    dry_run = args == ["--dry-run"]

    def show(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        report = resync(dry_run=dry_run, progress=show)
    except NotSetUp as exc:  # StripeNotConfigured, PriceNotFound: say what to set
        print(f"resync: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
