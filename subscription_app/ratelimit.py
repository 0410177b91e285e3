"""Rate limits for login and registration, per account and per client address.

Fixed windows counted in Redis when REDIS_URL is set (shared by every backend worker), else
in this process's memory (one worker, development).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from functools import lru_cache

from subscription_app.accounts import AccountError
from subscription_app.settings import get_settings


class RateLimited(AccountError):
    """Too many attempts; `retry_after` seconds until the window resets."""

    def __init__(self, retry_after: int) -> None:
        minutes = max(1, math.ceil(retry_after / 60))
        unit = "minute" if minutes == 1 else "minutes"
        super().__init__(f"Too many attempts. Please wait {minutes} {unit} and try again.")
        self.retry_after = retry_after


class _MemoryCounter:
    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, window: int) -> tuple[int, int]:
        now = time.time()
        with self._lock:
            count, expires = self._counts.get(key, (0, now + window))
            if expires <= now:
                self._counts.pop(key, None)
                return 0, window
            return count, int(expires - now) + 1

    def incr(self, key: str, window: int) -> None:
        now = time.time()
        with self._lock:
            count, expires = self._counts.get(key, (0, now + window))
            if expires <= now:
                count, expires = 0, now + window
            self._counts[key] = (count + 1, expires)
            if len(self._counts) > 100_000:  # bound memory: drop expired entries
                for stale in [k for k, (_, e) in self._counts.items() if e <= now]:
                    del self._counts[stale]

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


class _RedisCounter:
    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=2)

    def get(self, key: str, window: int) -> tuple[int, int]:
        pipe = self._redis.pipeline()
        pipe.get(key)
        pipe.ttl(key)
        count, ttl = pipe.execute()
        return int(count or 0), int(ttl) if ttl and ttl > 0 else window

    def incr(self, key: str, window: int) -> None:
        pipe = self._redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, window, nx=True)
        pipe.execute()

    def clear(self) -> None:
        for key in self._redis.scan_iter("ratelimit:*"):
            self._redis.delete(key)


@lru_cache(maxsize=2)
def _counter(redis_url: str | None):
    return _RedisCounter(redis_url) if redis_url else _MemoryCounter()


def counter():
    """The counter store in use (Redis or memory)."""
    return _counter(get_settings().redis_url)


def _key(kind: str, subject: str) -> str:
    # Hash the subject: no email addresses or IPs sit in Redis in clear.
    digest = hashlib.sha256(subject.strip().lower().encode()).hexdigest()[:32]
    return f"ratelimit:{kind}:{digest}"


def _check(kind: str, subject: str, limit: int) -> None:
    window = get_settings().rate_limit_window_seconds
    count, retry_after = counter().get(_key(kind, subject), window)
    if count >= limit:
        raise RateLimited(retry_after)


def _hit(kind: str, subject: str) -> None:
    counter().incr(_key(kind, subject), get_settings().rate_limit_window_seconds)


def check_login(*, email: str, client_address: str | None) -> None:
    """Raise `RateLimited` before a login attempt that is over a limit."""
    settings = get_settings()
    if client_address:
        _check("addr", client_address, settings.rate_limit_attempts_per_address)
    _check("login-fail", email, settings.rate_limit_login_failures_per_account)


def record_login(*, email: str, client_address: str | None, succeeded: bool) -> None:
    """Count a login attempt (failures also count against the account)."""
    if client_address:
        _hit("addr", client_address)
    if not succeeded:
        _hit("login-fail", email)


def check_register(*, email: str, client_address: str | None) -> None:
    """Raise `RateLimited` before a registration that is over a limit; count it otherwise."""
    settings = get_settings()
    if client_address:
        _check("addr", client_address, settings.rate_limit_attempts_per_address)
    _check("register", email, settings.rate_limit_registrations_per_account)
    if client_address:
        _hit("addr", client_address)
    _hit("register", email)
