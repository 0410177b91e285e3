"""Application settings: one object, read from the environment (and an optional `.env`).

Every secret comes from the environment. In development the settings fall back to
convenient defaults; in production (`APP_ENV=production`) a missing or placeholder secret
stops the app at start with a message naming the variable.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from functools import cached_property, lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that are never acceptable outside development: they are in the repo.
DEV_SECRET_KEY = "dev-insecure-secret-key-change-me-0123456789"
PLACEHOLDER_MARKERS = ("change-me", "changeme", "placeholder", "example", "xxx")

DEFAULT_PRICE_LOOKUP_KEY = "subscription_app_default_monthly"
# The most backend workers started when none are configured (as Reflex caps its own count).
MAX_DEFAULT_WORKERS = 8


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


class SettingsError(ValueError):
    """Raised when the configuration cannot run: the message names what is wrong."""


def _is_placeholder(value: str | None) -> bool:
    if not value:
        return True
    lowered = value.lower()
    return any(marker in lowered for marker in PLACEHOLDER_MARKERS)


def _is_local_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "127.0.0.1", "::1") or host.endswith(".localhost")


def parse_encryption_keys(raw: str, *, name: str = "APP_ENCRYPTION_KEYS") -> list[bytes]:
    """Parse a key list (`APP_ENCRYPTION_KEYS`, `APP_BLIND_INDEX_KEY`).

    The format is comma-separated urlsafe-base64 32-byte keys, the first one current.

    Raises:
        SettingsError: when a key is not base64 or not 32 bytes long.
    """
    keys: list[bytes] = []
    for index, part in enumerate(p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            key = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except (binascii.Error, ValueError) as exc:
            raise SettingsError(f"{name}: key #{index + 1} is not valid base64") from exc
        if len(key) != 32:
            raise SettingsError(
                f"{name}: key #{index + 1} must decode to 32 bytes "
                f"(got {len(key)}); generate one with `python -c "
                '"import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).decode())"`'
            )
        keys.append(key)
    return keys


class Settings(BaseSettings):
    """All configuration of the app. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    app_env: Literal["development", "production"] = "development"
    app_secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)
    app_encryption_keys: SecretStr = SecretStr("")
    # Keys the blind index of Stripe ids (lookups without decrypting); same format as
    # APP_ENCRYPTION_KEYS, first one current, the others still matched while re-hashing.
    app_blind_index_key: SecretStr = SecretStr("")
    # Public base URL of the app, used for links and redirects (and the emulator's webhook).
    app_url: str = "http://localhost:3000"

    database_url: str = "sqlite:///subscription_app.db"
    redis_url: str | None = None

    stripe_secret_key: SecretStr | None = None
    stripe_publishable_key: str | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_price_id: str | None = None
    stripe_price_lookup_key: str = DEFAULT_PRICE_LOOKUP_KEY
    stripe_api_base: str | None = None
    stripe_js_url: str = "https://js.stripe.com/v3/"

    # Reverse proxies whose X-Forwarded-Proto/-For we believe: comma-separated IPs or CIDRs.
    trusted_proxies: str = ""
    # Rate limits, per window: failed logins per account; login/registration attempts per
    # client address; registration attempts per email.
    rate_limit_window_seconds: int = Field(default=600, ge=1)
    rate_limit_login_failures_per_account: int = Field(default=5, ge=1)
    rate_limit_account_failure_ceiling: int = Field(default=50, ge=1)
    rate_limit_account_daily_failure_ceiling: int = Field(default=500, ge=1)
    rate_limit_attempts_per_address: int = Field(default=300, ge=1)
    rate_limit_registrations_per_account: int = Field(default=5, ge=1)
    # Card testing, per window (an hour): card attempts (subscribe calls and failed card
    # checks) and SetupIntents handed out, per account and per client address.
    rate_limit_card_window_seconds: int = Field(default=3600, ge=1)
    rate_limit_card_attempts_per_account: int = Field(default=5, ge=1)
    rate_limit_card_attempts_per_address: int = Field(default=20, ge=1)
    rate_limit_setup_intents_per_account: int = Field(default=20, ge=1)
    rate_limit_setup_intents_per_address: int = Field(default=60, ge=1)
    # Stripe calls a person's own requests make (the invoice list, the billing portal,
    # starting Checkout and its return page, cancel and undo), per account per minute: one
    # account looping over them must not use up the Stripe account's own rate limit, which
    # every subscribe and webhook shares.
    rate_limit_stripe_requests_per_minute: int = Field(default=60, ge=1)
    # Lifetime of a login (browser session cookie and API bearer token alike).
    session_ttl_minutes: int = Field(default=60 * 24 * 7, ge=5, le=60 * 24 * 90)
    smtp_url: str | None = None
    # Backend worker processes, as the servers Reflex runs read them (granian, gunicorn).
    # Read to refuse a configuration that would split limits and state per process, and to
    # tell granian how many to start (`server_workers`).
    granian_workers: int | None = Field(default=None, ge=1)
    web_concurrency: int | None = Field(default=None, ge=1)
    smtp_from: str = "Subscription App <billing@localhost>"
    # Where each backend worker applies webhook events: in a child process of its own
    # (default; it does not share the worker's interpreter lock with the web requests, and
    # runs at a lower CPU priority than they do) or on a thread of the worker itself.
    webhook_processor: Literal["process", "inline"] = "process"

    @property
    def configured_workers(self) -> int | None:
        """The backend worker count the environment sets (GRANIAN_WORKERS, WEB_CONCURRENCY)."""
        if self.granian_workers is None and self.web_concurrency is None:
            return None
        return max(self.granian_workers or 1, self.web_concurrency or 1)

    @property
    def server_workers(self) -> int | None:
        """How many backend workers `reflex run --env prod` is to start (rxconfig exports it).

        The configured count if there is one. Otherwise, with Redis (which several workers
        need), one per CPU this process may use, at least 2 and at most 8 (Reflex's own cap);
        without Redis None, and Reflex starts one. Not Reflex's 2 x CPUs + 1, a rule for
        blocking workers: ours are asynchronous, and each has a webhook processor process
        beside it, so workers beyond the cores only compete for them. Measured on 2 cores
        (`benchmarks/webhooks.py --workers`), PostgreSQL: 2 workers took webhooks at 0.30-0.32
        of the bare endpoint, 5 at 0.18-0.22, with lower p99 and lag, and a burst applied as
        fast.
        """
        if self.configured_workers is not None:
            return self.configured_workers
        if not self.redis_url:
            return None
        return min(max(available_cpus(), 2), MAX_DEFAULT_WORKERS)

    @field_validator(
        "redis_url",
        "stripe_price_id",
        "stripe_api_base",
        "smtp_url",
        "granian_workers",
        "web_concurrency",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # `FOO=` in a .env file means "not set", not "set to the empty string".
        return None if value == "" else value

    @field_validator("stripe_secret_key", "stripe_webhook_secret", mode="before")
    @classmethod
    def _empty_secret_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        problems: list[str] = []
        # Stripe: with a secret key, everything needed to take a payment must be there.
        if self.stripe_secret_key is not None:
            missing = []
            if not self.stripe_publishable_key:
                missing.append("STRIPE_PUBLISHABLE_KEY")
            if self.stripe_webhook_secret is None:
                missing.append("STRIPE_WEBHOOK_SECRET")
            if not self.stripe_price_id and not self.stripe_price_lookup_key:
                missing.append("STRIPE_PRICE_ID (or STRIPE_PRICE_LOOKUP_KEY)")
            if missing:
                problems.append(
                    "STRIPE_SECRET_KEY is set, so these must be set too: " + ", ".join(missing)
                )
        try:
            keys = parse_encryption_keys(self.app_encryption_keys.get_secret_value())
        except SettingsError as exc:
            problems.append(str(exc))
            keys = []
        try:
            index_keys = parse_encryption_keys(
                self.app_blind_index_key.get_secret_value(), name="APP_BLIND_INDEX_KEY"
            )
        except SettingsError as exc:
            problems.append(str(exc))
            index_keys = []
        if set(index_keys) & set(keys):
            problems.append(
                "APP_BLIND_INDEX_KEY must not reuse a key of APP_ENCRYPTION_KEYS: one key, one use"
            )
        for part in (p.strip() for p in self.trusted_proxies.split(",")):
            try:
                if part:
                    ipaddress.ip_network(part, strict=False)
            except ValueError:
                # Found here, not by every request answering 500.
                problems.append(
                    f"TRUSTED_PROXIES must list IP addresses or networks, comma-separated "
                    f"(got {part!r})"
                )
        app_url = urlsplit(self.app_url)
        if app_url.scheme not in ("http", "https") or not app_url.hostname:
            problems.append(f"APP_URL must be an absolute http(s):// URL (got {self.app_url!r})")
        # Fail closed: a public URL with no APP_ENV is a production deployment that forgot to
        # say so, and would run with development defaults (no HTTPS-only, no secret checks).
        if "app_env" not in self.model_fields_set and not _is_local_url(self.app_url):
            problems.append(
                f"APP_ENV is not set but APP_URL ({self.app_url}) is not a localhost URL: "
                "set APP_ENV=production (or APP_ENV=development to run it unprotected)"
            )
        workers = self.configured_workers or 1
        if workers > 1 and not self.redis_url:
            problems.append(
                f"{workers} backend workers need REDIS_URL: without it rate limits, single-use "
                "login codes and page state would each hold only inside one process"
            )

        if self.app_env == "production":
            secret = self.app_secret_key.get_secret_value()
            if _is_placeholder(secret) or secret == DEV_SECRET_KEY or len(secret) < 32:
                problems.append(
                    "APP_SECRET_KEY must be a random value of at least 32 characters in production"
                )
            if not keys:
                problems.append("APP_ENCRYPTION_KEYS must hold at least one key in production")
            if not index_keys:
                problems.append("APP_BLIND_INDEX_KEY must hold a key in production")
            if self.stripe_secret_key is None:
                problems.append("STRIPE_SECRET_KEY must be set in production")
            elif _is_placeholder(self.stripe_secret_key.get_secret_value()):
                problems.append("STRIPE_SECRET_KEY is a placeholder")
            if self.stripe_webhook_secret is not None and _is_placeholder(
                self.stripe_webhook_secret.get_secret_value()
            ):
                problems.append("STRIPE_WEBHOOK_SECRET is a placeholder")
            if self.database_url.startswith("sqlite"):
                problems.append("DATABASE_URL must point at PostgreSQL in production")
            if not self.app_url.startswith("https://"):
                problems.append("APP_URL must be an https:// URL in production")
        if problems:
            raise SettingsError("Invalid configuration:\n  - " + "\n  - ".join(problems))
        return self

    # Derived values -------------------------------------------------------

    @property
    def is_production(self) -> bool:
        """True when running with production safeguards on."""
        return self.app_env == "production"

    # Cached: every encryption and lookup asks for the keys (each webhook stored, for one),
    # and a Settings object's values do not change (new settings are a new object).
    @cached_property
    def encryption_keys(self) -> tuple[bytes, ...]:
        """The configured encryption keys, first one used for new ciphertexts."""
        return tuple(parse_encryption_keys(self.app_encryption_keys.get_secret_value()))

    @cached_property
    def blind_index_keys(self) -> tuple[bytes, ...]:
        """The blind-index keys, first one used for new rows."""
        return tuple(
            parse_encryption_keys(
                self.app_blind_index_key.get_secret_value(), name="APP_BLIND_INDEX_KEY"
            )
        )

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL with the driver we ship (psycopg 3) made explicit for PostgreSQL."""
        url = self.database_url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


def load_settings(**overrides) -> Settings:
    """Read the settings, turning any validation problem into one readable `SettingsError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ())).upper()
            message = str(error.get("msg", "")).removeprefix("Value error, ")
            lines.append(f"{where}: {message}" if where else message)
        raise SettingsError("\n".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call `get_settings.cache_clear()`."""
    return load_settings()
