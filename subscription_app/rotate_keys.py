"""Re-key what is stored: ciphertexts under the first APP_ENCRYPTION_KEYS key, and blind
indexes under the first APP_BLIND_INDEX_KEY key.

    python -m subscription_app.rotate_keys        (or: make rotate-keys)

Rotation: put the new key first (in APP_ENCRYPTION_KEYS, APP_BLIND_INDEX_KEY, or both), keep
the old ones after it, deploy, run this, then drop the old keys. While it runs, values decrypt
under any listed key and lookups match a hash under any listed index key, so nothing stops.
Each batch commits on its own and rows already under the first keys are left alone, so the
command is safe to interrupt and to run again.

    python -m subscription_app.rotate_keys --print-legacy-index-key

prints the index key the first release derived from APP_SECRET_KEY, for upgrading a database
made by it (README, "Keys").
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr
from pydantic_settings import BaseSettings
from sqlalchemy import Update, update
from sqlmodel import Session, SQLModel, col, select

from subscription_app import crypto
from subscription_app.crypto import Purpose
from subscription_app.db import session_scope
from subscription_app.models import BillingCustomer, StripeEvent, Subscription
from subscription_app.settings import DEV_SECRET_KEY, Settings


@dataclass(frozen=True)
class Sealed:
    """One encrypted column, its purpose, and the blind-index column kept beside it (if any)."""

    column: str
    purpose: Purpose
    index_column: str | None = None


ENCRYPTED_COLUMNS: list[tuple[type[SQLModel], tuple[Sealed, ...]]] = [
    (
        BillingCustomer,
        (Sealed("stripe_customer_id_enc", Purpose.STRIPE_ID, "stripe_customer_id_hash"),),
    ),
    (
        Subscription,
        (
            Sealed("stripe_customer_id_enc", Purpose.STRIPE_ID, "stripe_customer_id_hash"),
            Sealed("stripe_subscription_id_enc", Purpose.STRIPE_ID, "stripe_subscription_id_hash"),
        ),
    ),
    (StripeEvent, (Sealed("payload_enc", Purpose.EVENT_PAYLOAD),)),
]


def _rekeyed(row: SQLModel, columns: tuple[Sealed, ...]) -> dict[str, str]:
    """The row's values brought under the current keys: column -> new value, only those that
    change (empty if the row is already current)."""
    changes: dict[str, str] = {}
    for sealed in columns:
        stored = getattr(row, sealed.column)
        if not stored:
            continue
        plain: str | None = None
        if crypto.needs_rotation(stored):
            plain = crypto.decrypt(stored, purpose=sealed.purpose)
            changes[sealed.column] = crypto.encrypt(plain, purpose=sealed.purpose)
        if sealed.index_column:
            if plain is None:
                plain = crypto.decrypt(stored, purpose=sealed.purpose)
            current = crypto.blind_index(plain)
            if getattr(row, sealed.index_column) != current:
                changes[sealed.index_column] = current
    return changes


def _guarded_update(model: type[SQLModel], row: SQLModel, columns: tuple[Sealed, ...]) -> Update:
    """An UPDATE of `row` that matches only while its sealed columns still hold what was read.

    The app may rewrite a row between this command reading and writing it (a deleted Stripe
    customer replaced by a new one, say). A plain update would then put back the re-keyed
    old value; this one changes nothing, and the row is read again.
    """
    table = model.__table__  # type: ignore[attr-defined]  # every listed model is a table
    guard = [table.c.id == row.id]  # type: ignore[attr-defined]  # every listed model has an id
    for sealed in columns:
        for name in filter(None, (sealed.column, sealed.index_column)):
            value = getattr(row, name)
            guard.append(table.c[name].is_(None) if value is None else table.c[name] == value)
    return update(table).where(*guard)


# How often one row is read again after the app changed it under us, before it is left for
# the next run (a row the app rewrites is normally under the current keys already).
MAX_ROW_RETRIES = 5


def _write(
    session: Session, model: type[SQLModel], row: SQLModel, columns: tuple[Sealed, ...]
) -> bool | None:
    """Write `row`'s re-keyed values if it still holds what was read: True if written, False
    if the app changed it meanwhile, None if it needs nothing."""
    changes = _rekeyed(row, columns)
    if not changes:
        return None
    result = session.execute(_guarded_update(model, row, columns).values(**changes))
    return result.rowcount == 1  # type: ignore[attr-defined]  # an UPDATE's result


def _retry_row(model: type[SQLModel], row_id: int, columns: tuple[Sealed, ...]) -> bool:
    """Read one row the app changed under us again and re-key it; True if it was changed."""
    for _ in range(MAX_ROW_RETRIES):
        with session_scope() as session:
            row = session.get(model, row_id)
            if row is None:
                return False  # deleted meanwhile: nothing to re-key
            written = _write(session, model, row, columns)
            if written is not False:
                return bool(written)
    return False


def rotate(
    *, batch_size: int = 200, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, int]:
    """Re-key what is not under the current keys; returns rows changed per table.

    Each row is written only if it still holds what was read (see `_guarded_update`), so a
    value the app writes meanwhile is never overwritten with an older one.
    """
    counts: dict[str, int] = {}
    for model, columns in ENCRYPTED_COLUMNS:
        name = str(model.__tablename__)
        counts[name] = 0
        last_id = 0
        while True:
            changed_meanwhile: list[int] = []
            with session_scope() as session:
                # ENCRYPTED_COLUMNS lists table models as type[SQLModel], which declares no
                # `id`; every model listed there has an integer primary key `id`.
                rows = session.exec(
                    select(model)
                    .where(col(model.id) > last_id)  # type: ignore[attr-defined]  # see above
                    .order_by(col(model.id))  # type: ignore[attr-defined]  # see above
                    .limit(batch_size)
                ).all()
                if not rows:
                    break
                for row in rows:
                    written = _write(session, model, row, columns)
                    if written:
                        counts[name] += 1
                    elif written is False:
                        changed_meanwhile.append(row.id)  # type: ignore[attr-defined]  # as `last_id`
                last_id = rows[-1].id  # type: ignore[attr-defined]  # every listed model has an id
            for row_id in changed_meanwhile:
                if _retry_row(model, row_id, columns):
                    counts[name] += 1
            if progress:
                progress(name, last_id, counts[name])
    return counts


class _SecretKeyOnly(BaseSettings):
    """APP_SECRET_KEY, read from the same places as `Settings`, without its other checks."""

    model_config = Settings.model_config
    app_env: str = "development"
    app_secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--print-legacy-index-key"]:
        # Only APP_SECRET_KEY is read: in production the full settings refuse to load until
        # APP_BLIND_INDEX_KEY is set, and this prints what goes into it.
        read = _SecretKeyOnly()
        secret = read.app_secret_key.get_secret_value()
        if read.app_env != "development" and (secret == DEV_SECRET_KEY or len(secret) < 32):
            # Not the deployment's key (none set here, or a placeholder): a key derived from
            # it would find no row, so print nothing rather than a plausible wrong value.
            print("APP_SECRET_KEY is not set to the deployment's key here.", file=sys.stderr)
            return 2
        print(crypto.legacy_index_key(secret))
        return 0
    if args:
        print("usage: python -m subscription_app.rotate_keys [--print-legacy-index-key]")
        return 2

    def show(table: str, last_id: int, done: int) -> None:
        print(f"  {table}: up to id {last_id}, {done} row(s) re-keyed", flush=True)

    print("Re-keying stored Stripe identifiers and events under the first configured keys...")
    counts = rotate(progress=show)
    total = sum(counts.values())
    print(f"Done: {total} row(s) re-keyed " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
