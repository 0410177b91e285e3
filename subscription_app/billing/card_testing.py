"""Card checks Stripe declined, counted per person from Stripe's own webhooks.

Our page reports the declines it sees (`ratelimit.before_card_attempt`), but a script that
holds a client secret our page was given (a SetupIntent's, for the card form; a first
payment's PaymentIntent's, for 3-D Secure) can ask Stripe to check card after card against
it without ever telling us. Stripe still sends `setup_intent.setup_failed` or
`payment_intent.payment_failed` for each decline. Those are stored here, one row per event
(a redelivery counts once), and counted over the card-testing window
(`rate_limit_card_window_seconds`) against the same per-person limit as card attempts
(`rate_limit_card_attempts_per_account`):
- a person at the limit gets no new card form and no subscribe attempt (`retry_after`);
- a SetupIntent Stripe declined a card on is cancelled (`stop_this_card_check`): each
  further check needs a new one, which is counted per person and per client address;
- once a decline reaches the limit (`handlers.on_card_declined`), every SetupIntent of the
  person that still takes a card is cancelled at Stripe (`stop_card_checks`) and their
  attempts still waiting for a first payment are undone (`service.stop_first_payments`),
  so a script holding those client secrets can check no more cards on them.

Rows live in the database, not in the rate limiter's store: the webhook processor runs in
a process of its own, which cannot see a worker's in-memory counters (no Redis in
development).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta

import stripe
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from subscription_app.billing.client import get_client
from subscription_app.models import CardDecline, utcnow
from subscription_app.settings import get_settings

logger = logging.getLogger(__name__)


def _window() -> timedelta:
    return timedelta(seconds=get_settings().rate_limit_card_window_seconds)


def record_decline(session: Session, *, user_id: int, event_id: str, declined_at: datetime) -> bool:
    """Count the decline Stripe's event `event_id` reports; False if it was counted before.

    Also deletes this person's declines older than the window: they no longer count. The
    caller commits.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = (
        insert(CardDecline)
        .values(user_id=user_id, event_id=event_id, declined_at=declined_at)
        # Two processors applying the same event at once: only one row.
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(col(CardDecline.id))
    )
    added = session.connection().execute(statement).first() is not None
    session.connection().execute(
        delete(CardDecline).where(
            col(CardDecline.user_id) == user_id,
            col(CardDecline.declined_at) < utcnow() - _window(),
        )
    )
    return added


def retry_after(session: Session, *, user_id: int) -> int | None:
    """Seconds until the person may try a card again, or None if they are under the limit."""
    limit = get_settings().rate_limit_card_attempts_per_account
    window = _window()
    now = utcnow()
    # The newest `limit` declines in the window, in one statement (a prune between two
    # statements could leave fewer rows than a count had seen).
    newest = session.exec(
        select(CardDecline.declined_at)
        .where(col(CardDecline.user_id) == user_id, col(CardDecline.declined_at) >= now - window)
        .order_by(col(CardDecline.declined_at).desc())
        .limit(limit)
    ).all()
    if len(newest) < limit:
        return None
    # Under the limit again once all but `limit - 1` of them have left the window: when the
    # `limit`-th newest does.
    return max(1, math.ceil((newest[-1] + window - now).total_seconds()))


# The states in which a SetupIntent still takes a card.
OPEN_STATES = ("requires_payment_method", "requires_confirmation", "requires_action")


def stop_this_card_check(setup_intent_id: str) -> None:
    """Cancel a SetupIntent Stripe just declined a card on: one declined card per card form.

    Stripe lets a declined SetupIntent be confirmed again, card after card, by whoever holds
    its client secret. Cancelled, each further check needs a new SetupIntent, which our
    limits count per person and per client address (`ratelimit.before_setup_intent`); a
    script spreading its checks over throwaway accounts meets the address's limit. Our page
    asks for a new one after a decline itself. One that Stripe refuses to cancel (it saved a
    card meanwhile, or is gone) is left as it is; other failures are raised, for the
    processor to retry the event.
    """
    try:
        get_client().v1.setup_intents.cancel(setup_intent_id)
    except stripe.InvalidRequestError as exc:
        logger.info("card testing: a declined SetupIntent was not cancelled (%s)", exc.code)


def stop_card_checks(customer_id: str) -> None:
    """Cancel every SetupIntent of the customer that still takes a card.

    A script may hold several (one per card form it asked for), so all of them go, not
    only the one a decline named. One Stripe refuses to cancel (it saved a card meanwhile,
    or Stripe does not know it) is left as it is; any other failure (Stripe unreachable,
    rate limited...) is raised, for the webhook processor to retry the event.
    """
    client = get_client()
    listed = client.v1.setup_intents.list(params={"customer": customer_id, "limit": 100})
    for intent in listed.auto_paging_iter():
        if intent.status not in OPEN_STATES:
            continue
        try:
            client.v1.setup_intents.cancel(intent.id)
        except stripe.InvalidRequestError as exc:
            logger.warning("card testing: Stripe refused to cancel a SetupIntent (%s)", exc.code)
