"""Rate limits for login and registration, on `limits` (atomic windows in Redis or memory).

Counters live in Redis when REDIS_URL is set (shared by every backend worker), else in this
process's memory (one worker, development). Every limit is taken with `hit`, an atomic
increment-and-check, *before* the password is checked, so 40 parallel guesses cannot all get
past a limit of 5. Accounts are keyed by the email exactly as login normalizes it.

Login (see README, "Login limits"):
- per client address: `rate_limit_attempts_per_address` attempts per window, any account;
- per account and address: `rate_limit_login_failures_per_account` attempts per window that
  did not end in a login (a successful login clears it). A stranger's guesses from their
  address do not lock the owner out of theirs;
- per account from every address: past `rate_limit_account_failure_ceiling` failures in a
  window the account slows down to one attempt every `ACCOUNT_SLOW_SECONDS` seconds, and past
  `rate_limit_account_daily_failure_ceiling` in a day to one every `ACCOUNT_SLOWER_SECONDS`.
  Guessing from many addresses gets about 2,000 guesses a day at most, and the owner still
  gets in: not at all slowed from an address they logged in from in the last 30 days, and
  elsewhere one attempt per few seconds (a minute, under a day-long attack).

Card testing (README, "Card testing"), per `rate_limit_card_window_seconds` (an hour):
- card attempts (subscribe calls, and card checks the browser reports as failed) per account
  and per client address;
- SetupIntents handed out (each one lets a browser check a card at Stripe) per account and
  per client address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from functools import lru_cache

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from subscription_app.errors import AppError
from subscription_app.settings import get_settings

ACCOUNT_SLOW_SECONDS = 5
# Past `rate_limit_account_daily_failure_ceiling` failures in a day, slower still: the
# 10-minute ceiling starts afresh each window, and one guess every 5 seconds is 17,280 a day.
ACCOUNT_SLOWER_SECONDS = 60
DAY_SECONDS = 24 * 3600
# How long an address the owner logged in from stays known to the account (each login there
# renews it): the slowdown of an account under attack does not apply there.
KNOWN_ADDRESS_SECONDS = 30 * 24 * 3600


class RateLimited(AppError):
    """Too many attempts; `retry_after` seconds until the next one may be made."""

    def __init__(self, retry_after: int, what: str = "attempts") -> None:
        seconds = max(1, retry_after)
        if seconds < 60:
            wait = f"{seconds} second{'s' if seconds != 1 else ''}"
        else:
            minutes = math.ceil(seconds / 60)
            wait = f"{minutes} minute{'s' if minutes != 1 else ''}"
        super().__init__(
            f"Too many {what}. Please wait {wait} and try again.",
            kind="limited",
            retry_after=seconds,
        )


@lru_cache(maxsize=2)
def _storage(redis_url: str | None) -> Storage:
    found = storage_from_string(redis_url or "memory://")
    # `async+redis://` would give an asyncio store, which our synchronous limiter cannot use.
    if not isinstance(found, Storage):
        raise ValueError("REDIS_URL must name a synchronous store (redis://), not async+...")
    return found


def storage() -> Storage:
    """The counter store in use (Redis or memory)."""
    return _storage(get_settings().redis_url)


def _limiter() -> FixedWindowRateLimiter:
    return FixedWindowRateLimiter(storage())


def reset() -> None:
    """Forget every counter (tests)."""
    storage().reset()


def _id(subject: str) -> str:
    # Hashed: no email addresses or IPs sit in Redis in clear.
    return hashlib.sha256(subject.encode()).hexdigest()[:32]


def _network(client_address: str | None) -> str | None:
    """What a client address is counted as: itself for IPv4, its /64 for IPv6.

    One IPv6 subscriber usually holds a whole /64 and could take a fresh address for every
    attempt, each with a fresh budget.
    """
    if not client_address:
        return client_address
    try:
        address = ipaddress.ip_address(client_address)
    except ValueError:
        return client_address
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


# Wider IPv6 networks for login and registration attempts, each with a larger allowance
# (times the per-address one): a /64 is one subscriber, but one party may route a /56 (a
# home connection) or a /48 (a free tunnel, a hosting provider) and take a fresh /64 for every
# attempt, each with a fresh budget. Not for the card limits, whose allowances are a few an
# hour: a carrier's /48 may hold thousands of phones' /64s.
IPV6_WIDER = ((56, 4), (48, 16))


def _counted_as(network: str) -> list[tuple[str, int]]:
    """Each address limit `network` (as `_network` gave it) is counted under, with how many
    times the per-address allowance that limit has: itself, then for IPv6 its wider
    networks (`IPV6_WIDER`)."""
    counted = [(network, 1)]
    try:
        parsed = ipaddress.ip_network(network, strict=False)
    except ValueError:
        return counted
    if isinstance(parsed, ipaddress.IPv6Network):
        counted += [(str(parsed.supernet(new_prefix=p)), times) for p, times in IPV6_WIDER]
    return counted


def _take_per_address(
    per_address: int, kind: str, network: str, *, wider: bool = True, count: bool = True
) -> None:
    """`_take` under every limit `network` is counted under (`_counted_as`), each allowing
    `per_address * times` attempts per window; with `wider` False under its own only."""
    for subject, times in _counted_as(network)[: None if wider else 1]:
        _take(_window(per_address * times), kind, subject, count=count)


def _window(amount: int) -> RateLimitItem:
    return RateLimitItemPerSecond(amount, get_settings().rate_limit_window_seconds)


def _take(
    item: RateLimitItem, kind: str, *subjects: str, what: str = "attempts", count: bool = True
) -> None:
    """Count one attempt against `item`; raise `RateLimited` when it is over.

    `count=False` only asks whether one more would be allowed (a check before waiting).
    """
    limiter = _limiter()
    ids = (kind, *(_id(s) for s in subjects))
    allowed = limiter.hit(item, *ids) if count else limiter.test(item, *ids)
    if not allowed:
        reset_at = limiter.get_window_stats(item, *ids).reset_time
        raise RateLimited(math.ceil(reset_at - time.time()), what)


def before_login(*, account: str, client_address: str | None, count: bool = True) -> None:
    """Count a login attempt before the password is checked.

    `account` is the email as login normalizes it. `count=False` only checks, counting
    nothing. Raises `RateLimited`.
    """
    client_address = _network(client_address)
    settings = get_settings()
    known = _known(account, client_address)
    if client_address:
        # From an address the owner logged in from, only its own limit: others in its wider
        # network (a carrier's, a campus's) must not keep the owner out there.
        _take_per_address(
            settings.rate_limit_attempts_per_address,
            "addr",
            client_address,
            wider=not known,
            count=count,
        )
    ceiling = _window(settings.rate_limit_account_failure_ceiling)
    limiter = _limiter()
    if limiter.test(_daily_ceiling(), "account-failures-day", _id(account)):
        slow_for = (
            None
            if limiter.test(ceiling, "account-failures", _id(account))
            else ACCOUNT_SLOW_SECONDS
        )
    else:
        slow_for = ACCOUNT_SLOWER_SECONDS
    if slow_for is not None and not known:
        # Attackers from many addresses could otherwise take every slot, the owner's too;
        # from an address the owner has logged in from, the per-address limits still hold.
        item = RateLimitItemPerSecond(1, slow_for)
        _take(item, f"account-slow-{slow_for}", account, count=count)
    _take(
        _window(settings.rate_limit_login_failures_per_account),
        "account-addr",
        account,
        client_address or "-",
        count=count,
    )


def _daily_ceiling() -> RateLimitItem:
    return RateLimitItemPerSecond(
        get_settings().rate_limit_account_daily_failure_ceiling, DAY_SECONDS
    )


def login_failed(*, account: str) -> None:
    """A wrong password: count it towards the account's ceilings (every address)."""
    limiter = _limiter()
    limiter.hit(
        _window(get_settings().rate_limit_account_failure_ceiling),
        "account-failures",
        _id(account),
    )
    limiter.hit(_daily_ceiling(), "account-failures-day", _id(account))


def _known_item() -> RateLimitItem:
    return RateLimitItemPerSecond(1, KNOWN_ADDRESS_SECONDS)


def _known(account: str, client_address: str | None) -> bool:
    """Whether the owner has logged in from this address lately (`login_succeeded`)."""
    if not client_address:
        return False
    return not _limiter().test(_known_item(), "known", _id(account), _id(client_address))


def login_succeeded(*, account: str, client_address: str | None) -> None:
    """The owner got in from this address: their attempts there start afresh, and the
    address is known to the account for `KNOWN_ADDRESS_SECONDS` from now."""
    client_address = _network(client_address)
    limiter = _limiter()
    item = _window(get_settings().rate_limit_login_failures_per_account)
    limiter.clear(item, "account-addr", _id(account), _id(client_address or "-"))
    if client_address:
        ids = ("known", _id(account), _id(client_address))
        limiter.clear(_known_item(), *ids)  # a fresh window: known for the full period again
        limiter.hit(_known_item(), *ids)


def check_register(*, account: str, client_address: str | None, count: bool = True) -> None:
    """Count a registration attempt; raise `RateLimited` when over a limit.

    `count=False` only checks, counting nothing.
    """
    client_address = _network(client_address)
    settings = get_settings()
    if client_address:
        _take_per_address(
            settings.rate_limit_attempts_per_address, "addr", client_address, count=count
        )
    _take(_window(settings.rate_limit_registrations_per_account), "register", account, count=count)


# Card testing -------------------------------------------------------------------------

CARD_ATTEMPTS = "card attempts"


def _card_window(amount: int) -> RateLimitItem:
    return RateLimitItemPerSecond(amount, get_settings().rate_limit_card_window_seconds)


def _refuse_if_spent(item: RateLimitItem, kind: str, subject: str) -> None:
    limiter = _limiter()
    ids = (kind, _id(subject))
    if not limiter.test(item, *ids):
        reset_at = limiter.get_window_stats(item, *ids).reset_time
        raise RateLimited(math.ceil(reset_at - time.time()), CARD_ATTEMPTS)


def _take_per_account_and_address(
    kind: str, per_account: int, per_address: int, account: str, client_address: str | None
) -> None:
    # A person already over their own limit must not use up the budget of everyone else
    # behind the same address: look before counting there.
    _refuse_if_spent(_card_window(per_account), f"{kind}-account", account)
    if client_address:
        _take(_card_window(per_address), f"{kind}-addr", client_address, what=CARD_ATTEMPTS)
    _take(_card_window(per_account), f"{kind}-account", account, what=CARD_ATTEMPTS)


def before_card_attempt(*, account: str, client_address: str | None) -> None:
    """Count one card attempt (a subscribe call, or a failed check in the browser).

    `account` names the person (not their email: any stable id). Raises `RateLimited`.
    """
    client_address = _network(client_address)
    settings = get_settings()
    _take_per_account_and_address(
        "card",
        settings.rate_limit_card_attempts_per_account,
        settings.rate_limit_card_attempts_per_address,
        account,
        client_address,
    )


def check_card_attempts_left(*, account: str, client_address: str | None) -> None:
    """Refuse (`RateLimited`) a person or address with no card attempts left; counts nothing.

    Such a person gets no card form: it would only lead to the same refusal.
    """
    client_address = _network(client_address)
    settings = get_settings()
    _refuse_if_spent(
        _card_window(settings.rate_limit_card_attempts_per_account), "card-account", account
    )
    if client_address:
        _refuse_if_spent(
            _card_window(settings.rate_limit_card_attempts_per_address), "card-addr", client_address
        )


STRIPE_REQUESTS = "requests"


def before_stripe_request(*, account: str) -> None:
    """Count one Stripe call a person's own request makes (their invoice list, the billing
    portal, starting Checkout and its return page, cancel and undo). Raises `RateLimited`.

    `account` names the person (any stable id). Stripe limits the whole Stripe account's
    requests per second, and every subscribe, cancel and webhook re-read shares that budget.
    """
    item = RateLimitItemPerMinute(get_settings().rate_limit_stripe_requests_per_minute)
    _take(item, "stripe-requests", account, what=STRIPE_REQUESTS)


def before_setup_intent(*, account: str, client_address: str | None) -> None:
    """Count one SetupIntent handed to a browser. Raises `RateLimited`.

    A person (or address) with no card attempts left gets none (`check_card_attempts_left`).
    """
    client_address = _network(client_address)
    settings = get_settings()
    check_card_attempts_left(account=account, client_address=client_address)
    _take_per_account_and_address(
        "setup",
        settings.rate_limit_setup_intents_per_account,
        settings.rate_limit_setup_intents_per_address,
        account,
        client_address,
    )
