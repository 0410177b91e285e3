"""Settings: defaults for development, refusals for production."""

import pytest

from subscription_app import crypto
from subscription_app.settings import Settings, SettingsError, load_settings

GOOD_PROD = {
    "app_env": "production",
    "app_secret_key": "x7Gk2pQ9vR4mN8sT1wY6zB3cF5hJ0lD2aE9uI4oP7qK",
    "app_encryption_keys": crypto.generate_key(),
    "app_blind_index_key": crypto.generate_key(),
    "app_url": "https://billing.example.org",
    "database_url": "postgresql://app@db:5432/app",
    "stripe_secret_key": "sk_test_51AbCdEfGhIjKlMnOp",
    "stripe_publishable_key": "pk_test_51AbCdEfGhIjKlMnOp",
    "stripe_webhook_secret": "whsec_9f8e7d6c5b4a",
    "stripe_price_id": "price_123",
}


def make(**overrides) -> Settings:
    return load_settings(_env_file=None, **overrides)


def test_development_defaults_need_nothing():
    settings = make(app_env="development", app_encryption_keys="")
    assert settings.database_url.startswith("sqlite")
    assert settings.stripe_secret_key is None
    assert not settings.is_production


def test_complete_production_settings_are_accepted():
    settings = make(**GOOD_PROD)
    assert settings.is_production
    assert settings.sqlalchemy_url == "postgresql+psycopg://app@db:5432/app"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"app_secret_key": "change-me-please-change-me-please-1234"}, "APP_SECRET_KEY"),
        ({"app_secret_key": "short"}, "APP_SECRET_KEY"),
        ({"app_encryption_keys": ""}, "APP_ENCRYPTION_KEYS"),
        ({"app_encryption_keys": "not base64 at all!"}, "APP_ENCRYPTION_KEYS"),
        ({"app_encryption_keys": "c2hvcnQ="}, "32 bytes"),
        ({"app_blind_index_key": ""}, "APP_BLIND_INDEX_KEY"),
        ({"app_blind_index_key": "c2hvcnQ="}, "APP_BLIND_INDEX_KEY: key #1 must decode to 32"),
        ({"app_blind_index_key": GOOD_PROD["app_encryption_keys"]}, "one key, one use"),
        ({"stripe_secret_key": None}, "STRIPE_SECRET_KEY"),
        ({"stripe_secret_key": "sk_test_placeholder"}, "STRIPE_SECRET_KEY"),
        ({"stripe_webhook_secret": "whsec_example"}, "STRIPE_WEBHOOK_SECRET"),
        ({"database_url": "sqlite:///prod.db"}, "DATABASE_URL"),
        ({"app_url": "http://billing.example.org"}, "APP_URL"),
    ],
)
def test_production_refuses_missing_or_placeholder_values(override, named):
    values = {**GOOD_PROD, **override}
    with pytest.raises(SettingsError) as excinfo:
        make(**values)
    assert named in str(excinfo.value)


def test_stripe_key_requires_the_rest_and_names_what_is_missing():
    with pytest.raises(SettingsError) as excinfo:
        make(stripe_secret_key="sk_test_abc", stripe_price_lookup_key="")
    message = str(excinfo.value)
    assert "STRIPE_PUBLISHABLE_KEY" in message
    assert "STRIPE_WEBHOOK_SECRET" in message
    assert "STRIPE_PRICE_ID" in message


def test_empty_values_in_env_mean_unset(monkeypatch):
    monkeypatch.setenv("STRIPE_SECRET_KEY", "")
    monkeypatch.setenv("REDIS_URL", "")
    settings = Settings(_env_file=None)
    assert settings.stripe_secret_key is None
    assert settings.redis_url is None


def test_reads_the_environment(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/d")
    monkeypatch.setenv("APP_URL", "http://example.test")
    settings = Settings(_env_file=None)
    assert settings.sqlalchemy_url == "postgresql+psycopg://u@h/d"
    assert settings.app_url == "http://example.test"


def test_secrets_do_not_show_in_repr():
    settings = make(**GOOD_PROD)
    assert GOOD_PROD["stripe_secret_key"] not in repr(settings)
    assert GOOD_PROD["app_secret_key"] not in repr(settings)


@pytest.mark.parametrize("value", ["10.0.0.1, nginx", "10.0.0.0/33", "127.0.0.1;10.0.0.2"])
def test_a_trusted_proxies_entry_that_is_no_address_is_refused_at_start(value):
    # Not found later by every request answering 500.
    with pytest.raises(SettingsError, match="TRUSTED_PROXIES must list IP addresses"):
        make(app_env="development", trusted_proxies=value)
    assert make(app_env="development", trusted_proxies=" 10.0.0.1, 10.0.1.0/24 ,::1")


def test_invalid_app_env_is_refused():
    with pytest.raises(SettingsError, match="APP_ENV"):
        make(app_env="staging")


# Failing closed -------------------------------------------------------------------------


def _without_app_env(monkeypatch) -> None:
    monkeypatch.delenv("APP_ENV", raising=False)


@pytest.mark.parametrize(
    "url", ["https://billing.example.org", "http://10.0.0.5:3000", "http://billing.internal"]
)
def test_a_public_app_url_without_app_env_is_refused(monkeypatch, url):
    _without_app_env(monkeypatch)
    monkeypatch.setenv("APP_URL", url)
    with pytest.raises(SettingsError, match="APP_ENV is not set but APP_URL"):
        make()


@pytest.mark.parametrize(
    "url",
    ["http://localhost:3000", "http://127.0.0.1:3000", "http://[::1]:3000", "http://app.localhost"],
)
def test_a_local_app_url_without_app_env_is_development(monkeypatch, url):
    _without_app_env(monkeypatch)
    monkeypatch.setenv("APP_URL", url)
    assert not make().is_production


def test_app_env_said_outright_allows_a_public_url(monkeypatch):
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv("APP_URL", "http://billing.internal")
    assert not make().is_production


@pytest.mark.parametrize("variable", ["GRANIAN_WORKERS", "WEB_CONCURRENCY"])
def test_several_workers_without_redis_are_refused(monkeypatch, variable):
    monkeypatch.setenv(variable, "4")
    with pytest.raises(SettingsError, match="4 backend workers need REDIS_URL"):
        make()
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    make()
    monkeypatch.setenv(variable, "1")
    monkeypatch.delenv("REDIS_URL")
    make()  # one worker needs no Redis


@pytest.mark.parametrize(
    ("environment", "cpus", "expected"),
    [
        ({}, 2, None),  # no Redis: Reflex starts one worker
        ({"redis_url": "redis://r:6379/0"}, 2, 2),  # one per CPU...
        ({"redis_url": "redis://r:6379/0"}, 1, 2),  # ...at least two (several workers)...
        ({"redis_url": "redis://r:6379/0"}, 6, 6),
        ({"redis_url": "redis://r:6379/0"}, 64, 8),  # ...at most eight
        ({"redis_url": "redis://r:6379/0", "web_concurrency": "3"}, 2, 3),  # as configured
        ({"redis_url": "redis://r:6379/0", "granian_workers": "5"}, 16, 5),
        ({"granian_workers": "1"}, 4, 1),
    ],
)
def test_the_server_starts_one_worker_per_cpu_with_redis(monkeypatch, environment, cpus, expected):
    for name in ("GRANIAN_WORKERS", "WEB_CONCURRENCY", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("subscription_app.settings.available_cpus", lambda: cpus)
    assert make(**environment).server_workers == expected


def _rxconfig_exports(environment: dict[str, str]) -> dict:
    """After rxconfig is loaded (as `reflex run` loads it, then forks its workers): what
    GRANIAN_WORKERS is, and the count that process's settings and webhook processor see."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in {"GRANIAN_WORKERS", "REDIS_URL"}}
    code = (
        "import json, os, rxconfig\n"
        "from subscription_app.settings import get_settings\n"
        "from subscription_app.billing.processor_process import backend_workers\n"
        "print(json.dumps({'exported': os.environ.get('GRANIAN_WORKERS'),\n"
        "    'settings': get_settings().configured_workers, 'processor': backend_workers()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "REFLEX_ENV_MODE": "prod", **environment},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_rxconfig_tells_granian_the_worker_count_its_workers_see():
    from subscription_app.settings import MAX_DEFAULT_WORKERS, available_cpus

    default = min(max(available_cpus(), 2), MAX_DEFAULT_WORKERS)
    with_redis = _rxconfig_exports({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert with_redis == {"exported": str(default), "settings": default, "processor": default}
    # Without Redis Reflex starts one worker; an empty variable is no count at all.
    without = {"exported": None, "settings": None, "processor": 1}
    assert _rxconfig_exports({}) == without
    assert _rxconfig_exports({"GRANIAN_WORKERS": ""}) == without
    configured = {"REDIS_URL": "redis://127.0.0.1:6379/0", "WEB_CONCURRENCY": "3"}
    assert _rxconfig_exports(configured) == {"exported": "3", "settings": 3, "processor": 3}
