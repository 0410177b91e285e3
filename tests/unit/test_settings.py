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
