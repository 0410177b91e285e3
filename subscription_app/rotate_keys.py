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

from sqlmodel import SQLModel, col, select

from subscription_app import crypto
from subscription_app.crypto import Purpose
from subscription_app.db import session_scope
from subscription_app.models import BillingCustomer, StripeEvent, Subscription
from subscription_app.settings import get_settings


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


def _rekey(row: SQLModel, sealed: Sealed) -> bool:
    """Bring one value (and its index) under the current keys. True if anything changed."""
    stored = getattr(row, sealed.column)
    if not stored:
        return False
    changed = False
    plain: str | None = None
    if crypto.needs_rotation(stored):
        plain = crypto.decrypt(stored, purpose=sealed.purpose)
        setattr(row, sealed.column, crypto.encrypt(plain, purpose=sealed.purpose))
        changed = True
    if sealed.index_column:
        if plain is None:
            plain = crypto.decrypt(stored, purpose=sealed.purpose)
        current = crypto.blind_index(plain)
        if getattr(row, sealed.index_column) != current:
            setattr(row, sealed.index_column, current)
            changed = True
    return changed


def rotate(
    *, batch_size: int = 200, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, int]:
    """Re-key what is not under the current keys; returns rows changed per table."""
    counts: dict[str, int] = {}
    for model, columns in ENCRYPTED_COLUMNS:
        name = str(model.__tablename__)
        counts[name] = 0
        last_id = 0
        while True:
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
                    changes = [_rekey(row, sealed) for sealed in columns]
                    if any(changes):
                        counts[name] += 1
                        session.add(row)
                last_id = rows[-1].id  # type: ignore[attr-defined]  # every listed model has an id
            if progress:
                progress(name, last_id, counts[name])
    return counts


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--print-legacy-index-key"]:
        print(crypto.legacy_index_key(get_settings().app_secret_key.get_secret_value()))
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
