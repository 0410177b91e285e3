"""`make run` (devtools/run.py) reads `.env` exactly as the app's settings do."""

from __future__ import annotations

from devtools import run


def test_env_file_values_are_read_as_the_settings_read_them(tmp_path):
    env = tmp_path / ".env"
    env.write_text(
        "# a comment\n"
        "STRIPE_PRICE_ID=        # or leave empty to use the lookup key\n"
        'STRIPE_SECRET_KEY="sk_test_quoted"\n'
        "export APP_PORT=3100\n"
        "STRIPE_EMULATOR_PORT=8500 # a port\n"
        "EMPTY=\n"
    )
    values = run._read_env_file(env)
    assert values == {
        "STRIPE_PRICE_ID": "",
        "STRIPE_SECRET_KEY": "sk_test_quoted",
        "APP_PORT": "3100",
        "STRIPE_EMULATOR_PORT": "8500",
        "EMPTY": "",
    }
    assert run._read_env_file(tmp_path / "missing.env") == {}


def test_ports_come_from_the_environment_as_loaded_from_env(monkeypatch):
    """Read when `main` runs, after `.env` is loaded, not when the module is imported."""
    monkeypatch.setenv("APP_PORT", "3100")
    monkeypatch.setenv("STRIPE_EMULATOR_PORT", "8500")
    assert run._ports() == (3100, 8500)
    monkeypatch.delenv("APP_PORT")
    monkeypatch.delenv("STRIPE_EMULATOR_PORT")
    assert run._ports() == (3000, 8420)


def test_the_emulator_is_wanted_exactly_when_no_secret_key_is_set(tmp_path, monkeypatch):
    """What `make run` asks before installing the emulator's packages, read as the app does."""
    monkeypatch.delenv("STRIPE_SECRET_KEY", raising=False)
    env = tmp_path / ".env"
    assert run.wants_emulator(env) is True  # no .env at all
    for unset in ('STRIPE_SECRET_KEY=""\n', "STRIPE_SECRET_KEY=   # set me\n"):
        env.write_text(unset)
        assert run.wants_emulator(env) is True, unset
    env.write_text("export STRIPE_SECRET_KEY=sk_test_123\n")
    assert run.wants_emulator(env) is False
    env.write_text("")
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_from_env")
    assert run.wants_emulator(env) is False
