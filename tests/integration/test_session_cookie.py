"""The browser session cookie: HttpOnly, SameSite=Lax, Secure in production; handoff rules."""

import time

import pytest
from fastapi.testclient import TestClient

from subscription_app import accounts, crypto, session_cookie
from subscription_app.api import create_api
from subscription_app.security import SecurityMiddleware, allowed_origins
from subscription_app.settings import get_settings
from tests.integration.conftest import PRODUCTION


@pytest.fixture
def login_token(session):
    user = accounts.register_user(session=session, email="c@example.com", password="s3cret-pass")
    token = accounts.issue_token(session=session, user=user).token
    session.commit()
    return token


def set_cookie_header(response) -> str:
    return response.headers["set-cookie"]


def test_handoff_sets_an_httponly_lax_cookie_once(db_engine, login_token):
    api = TestClient(create_api())
    handoff = session_cookie.make_handoff(login_token)
    assert login_token not in handoff  # page scripts only ever see the sealed code
    response = api.post("/api/v1/auth/session", json={"handoff": handoff})
    assert response.status_code == 204
    header = set_cookie_header(response).lower()
    assert header.startswith("sa_session=")
    assert "httponly" in header and "samesite=lax" in header and "path=/" in header
    assert "secure" not in header  # development over http
    replay = api.post("/api/v1/auth/session", json={"handoff": handoff})
    assert replay.status_code == 400


def test_cookie_is_secure_in_production(settings_env, db_engine, session):
    settings_env(**PRODUCTION, APP_ENCRYPTION_KEYS=crypto.generate_key())
    user = accounts.register_user(session=session, email="p@example.com", password="s3cret-pass")
    handoff = session_cookie.make_handoff(accounts.issue_token(session=session, user=user).token)
    session.commit()
    api = TestClient(SecurityMiddleware(create_api()), base_url="https://billing.example.org")
    response = api.post("/api/v1/auth/session", json={"handoff": handoff})
    assert response.status_code == 204
    header = set_cookie_header(response)
    # `__Host-`: the browser keeps it only if Secure, Path=/ and no Domain, so a sibling
    # subdomain or a plain-HTTP response can neither set nor shadow it.
    assert header.startswith("__Host-sa_session=")
    lowered = header.lower()
    assert "secure" in lowered and "httponly" in lowered and "samesite=lax" in lowered
    assert "path=/" in lowered and "domain=" not in lowered

    # The app reads only the prefixed cookie; an unprefixed one (which a subdomain could
    # plant) is not a session. Logging out clears the prefixed cookie.
    token = response.cookies["__Host-sa_session"]
    assert session_cookie.token_from_cookie_header(f"sa_session={token}") == ""
    assert session_cookie.token_from_cookie_header(f"__Host-sa_session={token}") == token
    api.cookies.set("__Host-sa_session", token)
    logout = api.delete("/api/v1/auth/session")
    assert logout.status_code == 204
    assert set_cookie_header(logout).startswith("__Host-sa_session=")
    session.rollback()
    assert accounts.user_for_token(session=session, token=token) is None


@pytest.mark.parametrize("case", ["garbage", "tampered", "expired", "revoked"])
def test_bad_handoffs_are_refused(db_engine, session, login_token, monkeypatch, case):
    api = TestClient(create_api())
    if case == "garbage":
        handoff = "not-a-code"
    elif case == "tampered":
        good = session_cookie.make_handoff(login_token)
        handoff = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    elif case == "expired":
        monkeypatch.setattr(session_cookie.time, "time", lambda: time.monotonic() - 10**9)
        handoff = session_cookie.make_handoff(login_token)
        monkeypatch.undo()
    else:
        accounts.revoke_token(session=session, token=login_token)
        session.commit()
        handoff = session_cookie.make_handoff(login_token)
    response = api.post("/api/v1/auth/session", json={"handoff": handoff})
    assert response.status_code == 400
    assert "set-cookie" not in response.headers


def test_delete_revokes_the_session_and_clears_the_cookie(db_engine, session, login_token):
    api = TestClient(create_api())
    api.cookies.set("sa_session", login_token)
    response = api.delete("/api/v1/auth/session")
    assert response.status_code == 204
    assert 'sa_session=""' in set_cookie_header(response) or "Max-Age=0" in set_cookie_header(
        response
    )
    session.rollback()
    assert accounts.user_for_token(session=session, token=login_token) is None


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"origin": "https://evil.example"}, False),  # another site
        ({"origin": "https://pay.evil.example"}, False),
        ({"sec-fetch-site": "same-site"}, False),  # a sibling subdomain: SameSite lets it
        ({"sec-fetch-site": "cross-site"}, False),
        ({"sec-fetch-site": "same-origin"}, True),  # our own page's fetch
        ({}, True),  # not a browser: no cookie of anyone's rides along
    ],
)
def test_only_our_own_pages_may_set_the_cookie(db_engine, login_token, headers, allowed):
    api = TestClient(create_api())
    handoff = session_cookie.make_handoff(login_token)
    response = api.post("/api/v1/auth/session", json={"handoff": handoff}, headers=headers)
    assert response.status_code == (204 if allowed else 403)
    assert ("set-cookie" in response.headers) is allowed


@pytest.mark.parametrize("fetch_site", ["same-origin", "same-site"])
def test_our_own_origin_may_set_the_cookie(db_engine, login_token, fetch_site):
    """Also from another port of the same host (our pages apart from the backend)."""
    api = TestClient(create_api())
    [origin, *_] = allowed_origins(get_settings())
    handoff = session_cookie.make_handoff(login_token)
    headers = {"origin": origin, "sec-fetch-site": fetch_site}
    assert (
        api.post("/api/v1/auth/session", json={"handoff": handoff}, headers=headers).status_code
        == 204
    )


def _browser_login(api: TestClient, token: str) -> None:
    """The page's step after a login: the handoff sets the browser's cookie to `token`."""
    handoff = session_cookie.make_handoff(token)
    assert api.post("/api/v1/auth/session", json={"handoff": handoff}).status_code == 204
    assert api.cookies.get("sa_session") == token


@pytest.mark.parametrize("in_tab", ["older", "newer"])
def test_logging_out_ends_every_login_that_took_turns_in_the_browsers_cookie(
    db_engine, session, in_tab
):
    """Two tabs of one browser, each logged in on its own (a third person's login came
    between on a shared computer): the cookie names only the newest, and logging out in any
    tab ends them all, or a tab still holding an older login keeps acting."""
    alice = accounts.register_user(session=session, email="a@example.com", password="s3cret-pass")
    bob = accounts.register_user(session=session, email="b@example.com", password="s3cret-pass")
    tokens = [accounts.issue_token(session=session, user=user).token for user in (alice, bob)]
    tokens.append(accounts.issue_token(session=session, user=alice).token)
    elsewhere = accounts.issue_token(session=session, user=alice).token  # another device
    session.commit()
    api = TestClient(create_api())
    for token in tokens:
        _browser_login(api, token)
    if in_tab == "newer":
        assert api.delete("/api/v1/auth/session").status_code == 204
    else:  # the first tab logs out with the login it holds (the cookie names another)
        accounts.revoke_token(session=session, token=tokens[0])
        session.commit()
    session.rollback()
    assert [accounts.user_for_token(session=session, token=t) for t in tokens] == [None] * 3
    assert accounts.user_for_token(session=session, token=elsewhere) is not None


@pytest.mark.parametrize(
    "others",
    ['consent={"ads":false}', "theme=dark mode", 'broken="unclosed', "a=1; ; b"],
)
def test_the_session_is_found_beside_cookies_other_parsers_choke_on(others):
    """Cookies of other sites on the parent domain, set before ours, hide nothing."""
    name = session_cookie.cookie_name()
    assert session_cookie.token_from_cookie_header(f"{others}; {name}=tok.en-_1") == "tok.en-_1"
    assert session_cookie.token_from_cookie_header(f"{name}=tok.en-_1; {others}") == "tok.en-_1"
    assert session_cookie.token_from_cookie_header(others) == ""
