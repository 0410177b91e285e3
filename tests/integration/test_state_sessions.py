"""The session check every Reflex event handler runs first (`state.auth.call_as_user`)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from subscription_app import accounts
from subscription_app.models import AuthSession, utcnow
from subscription_app.state.auth import SessionEnded, call_as_user


@pytest.fixture
def login(session):
    user = accounts.register_user(session=session, email="tab@example.com", password="s3cret-pass")
    issued = accounts.issue_token(session=session, user=user)
    session.commit()
    return user, accounts.session_id_for_token(issued.token), issued.token


def test_a_live_session_runs_the_call_for_its_user(db_engine, login):
    user, session_id, _ = login
    assert call_as_user(session_id, lambda s, u: u.email) == user.email


def test_a_revoked_sessions_event_is_refused_and_runs_nothing(db_engine, session, login):
    _, session_id, token = login
    assert accounts.revoke_token(session=session, token=token)  # logout in another tab / API
    session.commit()
    ran = []
    with pytest.raises(SessionEnded):
        call_as_user(session_id, lambda s, u: ran.append(u))
    assert ran == []


def test_an_expired_sessions_event_is_refused(db_engine, session, login):
    _, session_id, _ = login
    row = session.get(AuthSession, session_id)
    row.expires_at = utcnow() - timedelta(seconds=1)
    session.add(row)
    session.commit()
    with pytest.raises(SessionEnded):
        call_as_user(session_id, lambda s, u: u.id)


@pytest.mark.parametrize("session_id", ["", "not-a-session", "a" * 64])
def test_no_or_unknown_session_is_refused(db_engine, session_id):
    with pytest.raises(SessionEnded):
        call_as_user(session_id, lambda s, u: u.id)


def test_the_state_keeps_a_session_id_not_a_bearer_token(db_engine, login):
    from subscription_app.state.auth import AuthState

    _, session_id, token = login
    backend_vars = {name for name in AuthState.__annotations__ if name.startswith("_")}
    assert "_auth_session_id" in backend_vars
    assert not {"_session_token", "_token", "_user_id"} & backend_vars
    assert session_id != token and session_id not in token
