"""The API as the running app serves it (Reflex backend, every middleware)."""

import httpx
import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/nope"), ("POST", "/api/v1/subscriptions/unknown"), ("GET", "/api/v1/")],
)
def test_unknown_api_path_is_a_json_404_not_the_app_page(live_app, method, path):
    response = httpx.request(method, live_app.url + path, timeout=30)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["detail"].startswith("No such API endpoint")
