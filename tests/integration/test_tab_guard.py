"""`TabGuard` with the state store production uses: Reflex's Redis manager, which loads only
the part of a tab's state tree an event needs (`subscription_app/state/auth.py`)."""

from __future__ import annotations

import os
import uuid

import pytest
import redis.asyncio as aioredis
from reflex.istate.data import RouterData
from reflex.istate.manager.redis import StateManagerRedis
from reflex.istate.manager.token import BaseStateToken
from reflex_base.event import Event
from reflex_base.event.context import EventContext
from reflex_base.utils.format import format_event_handler

from subscription_app import accounts, routes
from subscription_app.state.auth import AuthState
from subscription_app.state.billing import DashboardState, PlanState
from subscription_app.subscription_app import app

REDIS = os.environ.get("TEST_REDIS_URL")
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not REDIS, reason="needs TEST_REDIS_URL (a Redis server)"),
]


@pytest.fixture
def anyio_backend() -> str:
    """Reflex runs event handlers on asyncio."""
    return "asyncio"


def _connection(sid: str, token: str) -> RouterData:
    return RouterData.from_router_data(
        {"sid": sid, "token": token, "headers": {}, "pathname": routes.PLAN, "asPath": routes.PLAN}
    )


async def test_a_borrowed_tokens_first_event_empties_states_it_did_not_load(db_engine, session):
    """Its first event is on the plan page: Redis loads the root, the login and the plan's
    state, not the dashboard's. The dashboard's must be emptied all the same, or the
    connection could log in as itself and then hydrate it."""
    user = accounts.register_user(session=session, email="r@example.com", password="s3cret-pass")
    issued = accounts.issue_token(session=session, user=user)
    session.commit()
    client = aioredis.Redis.from_url(str(REDIS))
    manager = StateManagerRedis(redis=client)
    token = f"tab-guard-{uuid.uuid4().hex}"
    try:
        async with manager.modify_state(BaseStateToken(ident=token, cls=DashboardState)) as root:
            root.router = _connection("the-owners-socket", token)
            (await root.get_state(AuthState))._remember(issued.session_id, issued.email)
            dash = await root.get_state(DashboardState)
            dash.has_subscription, dash.messages = True, ["Your payment went through."]

        async def enqueue(token: str, *events: Event) -> None:
            raise AssertionError("nothing is queued here")

        # What Reflex has set while it runs an event (the store the states come from).
        context = EventContext(token=token, state_manager=manager, enqueue_impl=enqueue)
        async with manager.modify_state(BaseStateToken(ident=token, cls=PlanState)) as root:
            dashboard_name = DashboardState.get_name()
            loaded = root.get_substate(AuthState.get_full_name().split(".")[1:]).substates
            assert dashboard_name not in loaded  # the case this test is about
            root.router = _connection("someone-elses-socket", token)  # no cookie
            app.event_namespace.sid_to_token["someone-elses-socket"] = token  # its socket
            load = Event(name=format_event_handler(PlanState.event_handlers["load"]))
            with context:
                answer = await app._preprocess(root, load)
            # Not run: the page is told to load afresh.
            assert answer is not None and [e.name for e in answer.events] == ["_call_script"]

        async with manager.modify_state(BaseStateToken(ident=token, cls=DashboardState)) as root:
            dash = await root.get_state(DashboardState)
            assert dash.messages == [] and dash.has_subscription is False
            assert (await root.get_state(AuthState)).user_email == ""
    finally:
        app.event_namespace.sid_to_token.pop("someone-elses-socket", None)
        keys = [key async for key in client.scan_iter(match=f"{token}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
