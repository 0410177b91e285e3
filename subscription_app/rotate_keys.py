"""Re-encrypt every stored Stripe identifier under the first key of APP_ENCRYPTION_KEYS.

    python -m subscription_app.rotate_keys        (or: make rotate-keys)

Rotation: put the new key first in APP_ENCRYPTION_KEYS, keep the old ones after it, deploy,
run this, then drop the old keys. Each batch commits on its own and rows already under the
first key are left alone, so the command is safe to interrupt and to run again. The blind
index (keyed from APP_SECRET_KEY) does not change, so lookups keep working throughout.
"""

from __future__ import annotations

import sys

from sqlmodel import SQLModel, col, select

from subscription_app import crypto
from subscription_app.db import session_scope
from subscription_app.models import BillingCustomer, StripeEvent, Subscription

ENCRYPTED_COLUMNS: list[tuple[type[SQLModel], tuple[str, ...]]] = [
    (BillingCustomer, ("stripe_customer_id_enc",)),
    (Subscription, ("stripe_customer_id_enc", "stripe_subscription_id_enc")),
    (StripeEvent, ("payload_enc",)),
]


def rotate(*, batch_size: int = 200, progress=None) -> dict[str, int]:
    """Re-encrypt what is not under the current key; returns values re-encrypted per table."""
    counts: dict[str, int] = {}
    for model, columns in ENCRYPTED_COLUMNS:
        name = model.__tablename__
        counts[name] = 0
        last_id = 0
        while True:
            with session_scope() as session:
                rows = session.exec(
                    select(model)
                    .where(col(model.id) > last_id)
                    .order_by(col(model.id))
                    .limit(batch_size)
                ).all()
                if not rows:
                    break
                for row in rows:
                    for column in columns:
                        value = getattr(row, column)
                        if value and crypto.needs_rotation(value):
                            setattr(row, column, crypto.encrypt(crypto.decrypt(value)))
                            counts[name] += 1
                    session.add(row)
                last_id = rows[-1].id
            if progress:
                progress(name, last_id, counts[name])
    return counts


def main() -> int:
    """Command-line entry point."""

    def show(table: str, last_id: int, done: int) -> None:
        print(f"  {table}: up to id {last_id}, {done} value(s) re-encrypted", flush=True)

    print("Re-encrypting Stripe identifiers under the first APP_ENCRYPTION_KEYS key...")
    counts = rotate(progress=show)
    total = sum(counts.values())
    print(
        f"Done: {total} value(s) re-encrypted " + ", ".join(f"{k}={v}" for k, v in counts.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
