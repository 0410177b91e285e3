"""Malformed input thrown at every /api/v1 route: never a 5xx, and a refusal changes nothing."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subscription_app.api import create_api

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=60),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["email", "password", "payment_method_id", "at_period_end", "id", "type", "created"]
field_values = st.one_of(
    json_values,
    st.text(max_size=300),
    st.sampled_from(["pm_", "pm_123", "pm_" + "x" * 300, "a@b", "@", "x@example.com", "", " "]),
)
bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=4).map(json.dumps),
    json_values.map(json.dumps),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": st.one_of(st.just("VALID"), header_text.map(lambda t: f"Bearer {t}")),
        "Stripe-Signature": header_text,
        "Content-Type": st.sampled_from(["application/json", "text/plain", "x/y"]),
    },
)


def operations() -> list[tuple[str, str]]:
    schema = create_api().openapi()
    return sorted(
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if path.startswith("/api/v1/")
    )


def table_snapshot(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table: conn.execute(sa.text(f'SELECT COUNT(*) FROM "{table}"')).scalar()
            for table in sa.inspect(engine).get_table_names()
            if table != "alembic_version"
        }


@pytest.fixture
def fuzz_client(db_engine, stripe_env, settings_env):
    settings_env(STRIPE_WEBHOOK_SECRET="whsec_fuzz", RATE_LIMIT_ATTEMPTS_PER_ADDRESS="1000000")
    with TestClient(create_api(), raise_server_exceptions=False) as client:
        body = {"email": "fuzz@example.com", "password": "s3cret-pass"}
        assert client.post("/api/v1/auth/register", json=body).status_code == 201
        token = client.post("/api/v1/auth/login", json=body).json()["access_token"]
        yield client, token, db_engine


# Every route of the API, spelled out: a new route must be added here, so it gets fuzzed and
# a route that disappears is noticed.
ROUTES = [
    ("DELETE", "/api/v1/auth/session"),
    ("GET", "/api/v1/auth/me"),
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/subscriptions/invoices"),
    ("GET", "/api/v1/subscriptions/me"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/logout"),
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/session"),
    ("POST", "/api/v1/subscriptions/cancel"),
    ("POST", "/api/v1/subscriptions/checkout-session"),
    ("POST", "/api/v1/subscriptions/checkout-session/complete"),
    ("POST", "/api/v1/subscriptions/confirm"),
    ("POST", "/api/v1/subscriptions/portal-session"),
    ("POST", "/api/v1/subscriptions/resume"),
    ("POST", "/api/v1/subscriptions/setup-intent"),
    ("POST", "/api/v1/subscriptions/subscribe"),
    ("POST", "/api/v1/webhooks/stripe"),
]


def test_the_fuzzer_covers_exactly_the_routes_of_the_api():
    assert operations() == ROUTES


@pytest.mark.parametrize(("method", "path"), operations())
def test_malformed_input_never_crashes_or_changes_anything(fuzz_client, method, path):
    client, token, engine = fuzz_client

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(body=bodies, request_headers=headers, query=st.text(max_size=30))
    def check(body, request_headers, query):
        sent = dict(request_headers)
        if sent.get("Authorization") == "VALID":
            sent["Authorization"] = f"Bearer {token}"
        before = table_snapshot(engine)
        response = client.request(
            method,
            path,
            content=body.encode("utf-8", "surrogatepass"),
            headers=sent,
            params={"q": query} if query else None,
        )
        assert response.status_code < 500, (response.status_code, response.text, body)
        if response.status_code >= 400:
            assert table_snapshot(engine) == before, (path, body, response.text)
            assert "Traceback" not in response.text

    check()
