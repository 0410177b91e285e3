"""REST auth endpoints: good and bad input, on SQLite and PostgreSQL."""

import pytest
from fastapi.testclient import TestClient

from subscription_app import accounts
from subscription_app.api import create_api


@pytest.fixture
def client(db_engine):
    with TestClient(create_api(), raise_server_exceptions=False) as test_client:
        yield test_client


def register(client, email="user@example.com", password="s3cret-pass"):
    return client.post("/api/v1/auth/register", json={"email": email, "password": password})


def login(client, email="user@example.com", password="s3cret-pass"):
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def test_health(client):
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_register_login_me_logout(client):
    response = register(client, email="  New.User@Example.com ")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["email"] == "new.user@example.com"
    assert "password" not in response.text and "hash" not in response.text

    response = login(client, email="new.user@EXAMPLE.com")
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"] == "bearer"
    assert token["expires_in"] > 0
    headers = {"Authorization": f"Bearer {token['access_token']}"}

    me = client.get("/api/v1/auth/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["email"] == "new.user@example.com"

    assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204
    after = client.get("/api/v1/auth/me", headers=headers)
    assert after.status_code == 401
    assert "log in again" in after.json()["detail"].lower()


def test_duplicate_registration_is_refused_clearly(client):
    assert register(client).status_code == 201
    response = register(client, email="USER@example.com", password="another-pass")
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]


def test_wrong_password_and_unknown_email_get_the_same_answer(client):
    register(client)
    wrong = login(client, password="wrong-password")
    unknown = login(client, email="nobody@example.com")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "Incorrect email or password."}


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"email": "not-an-email", "password": "s3cret-pass"}, 422, "email address is not valid"),
        ({"email": "a@example.com", "password": "short"}, 422, "at least 8 characters"),
        ({"email": "a@example.com"}, 422, "password"),
        ({"password": "s3cret-pass"}, 422, "email"),
        ({"email": 12, "password": "s3cret-pass"}, 422, "email"),
        ({"email": "a@example.com", "password": "x" * 500}, 422, "password"),
        ({"email": "a@example.com", "password": "s3cret-pass", "admin": True}, 422, "admin"),
        ([], 422, "Invalid request"),
    ],
)
def test_register_rejects_bad_fields_readably(client, payload, status, fragment):
    response = client.post("/api/v1/auth/register", json=payload)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


@pytest.mark.parametrize("path", ["/api/v1/auth/register", "/api/v1/auth/login"])
def test_invalid_json_gets_400(client, path):
    response = client.post(path, content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"detail": "The request body is not valid JSON."}


def test_bad_input_changes_nothing(client, session):
    from sqlmodel import func, select

    from subscription_app.models import User

    client.post("/api/v1/auth/register", json={"email": "bad", "password": "s3cret-pass"})
    client.post("/api/v1/auth/register", content=b"{", headers={"Content-Type": "application/json"})
    session.rollback()  # a fresh snapshot
    assert session.exec(select(func.count()).select_from(User)).one() == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
)
def test_me_requires_a_valid_bearer_token(client, headers):
    response = client.get("/api/v1/auth/me", headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"]


def test_a_write_is_committed_before_its_answer_is_sent(client, monkeypatch):
    """A 201 means the account exists: a commit that fails is the client's 500, not a 201."""
    from sqlmodel import Session

    def failing_commit(self):
        raise RuntimeError("the database went away at commit")

    monkeypatch.setattr(Session, "commit", failing_commit)
    response = client.post(
        "/api/v1/auth/register", json={"email": "late@example.com", "password": "s3cret-pass"}
    )
    assert response.status_code == 500
    assert "Something went wrong" in response.json()["detail"]


def test_a_login_the_server_is_too_busy_to_check_gets_503_and_retry_after(client, monkeypatch):
    register(client, "busy@example.com")
    monkeypatch.setattr(accounts, "HASHING_WAIT_SECONDS", 0.05)
    assert accounts._hashing.acquire(timeout=1)  # a flood holds every password check
    try:
        answer = login(client, "busy@example.com")
    finally:
        accounts._hashing.release()
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] and "try again" in answer.json()["detail"]
    assert login(client, "busy@example.com").status_code == 200
