"""Apply the Alembic migrations: `python -m subscription_app.migrate` (used by `make run`)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str | None = None) -> Config:
    """Alembic config for this repo; `url` overrides DATABASE_URL (tests use it)."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database at `url` (default: DATABASE_URL) up to `revision`."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    """Migrate the database at `url` (default: DATABASE_URL) down to `revision`."""
    command.downgrade(alembic_config(url), revision)


if __name__ == "__main__":
    upgrade()
