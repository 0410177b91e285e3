"""A fresh PostgreSQL schema for tests and benchmarks, dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import sqlalchemy as sa

from subscription_app.settings import Settings


@contextlib.contextmanager
def fresh_schema(database_url: str, prefix: str = "t") -> Iterator[str]:
    """Yield a URL whose connections use a new, empty schema in `database_url`'s database."""
    base = Settings(database_url=database_url).sqlalchemy_url
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
