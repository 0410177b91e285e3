"""Behind trusted proxies the client is the rightmost untrusted X-Forwarded-For hop."""

import pytest

from subscription_app.security import forwarded_client


@pytest.fixture
def settings(settings_env):
    return settings_env(TRUSTED_PROXIES="10.0.0.1,10.0.1.0/24")


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        # One proxy: it appended the address it saw.
        ("10.0.0.1", "192.0.2.10", "192.0.2.10"),
        # The client forged a leftmost hop; the proxy's own entry is the rightmost.
        ("10.0.0.1", "1.2.3.4, 192.0.2.10", "192.0.2.10"),
        # Two of our proxies in a row: skip both.
        ("10.0.0.1", "6.6.6.6, 192.0.2.10, 10.0.1.5", "192.0.2.10"),
        # Every hop is ours: the leftmost is the best we know.
        ("10.0.0.1", "10.0.1.7, 10.0.1.5", "10.0.1.7"),
        # Not from a trusted proxy: the header is ignored.
        ("203.0.113.9", "192.0.2.10", "203.0.113.9"),
        ("10.0.0.1", None, "10.0.0.1"),
        ("10.0.0.1", " , ", "10.0.0.1"),
        # A proxy that sends the port too: one client is one address, not one per connection.
        ("10.0.0.1", "192.0.2.10:51234", "192.0.2.10"),
        ("10.0.0.1", "[2001:db8::7]:443", "2001:db8::7"),
        ("10.0.0.1", "198.51.100.1, 10.0.1.5:8080", "198.51.100.1"),
        ("10.0.0.1", "2001:db8::7", "2001:db8::7"),
    ],
)
def test_forwarded_client(settings, peer, header, client):
    assert forwarded_client(peer, header, settings) == client


def test_a_changed_proxy_list_is_heeded_for_a_peer_seen_before(settings_env):
    # Answers per peer are kept for speed; they must belong to the list they were made for.
    trusted = settings_env(TRUSTED_PROXIES="10.0.0.1")
    assert forwarded_client("10.0.0.1", "192.0.2.10", trusted) == "192.0.2.10"
    untrusted = settings_env(TRUSTED_PROXIES="10.0.0.2")
    assert forwarded_client("10.0.0.1", "192.0.2.10", untrusted) == "10.0.0.1"
    none = settings_env(TRUSTED_PROXIES="")
    assert forwarded_client("10.0.0.1", "192.0.2.10", none) == "10.0.0.1"


def test_a_forged_hop_of_any_length_is_answered_but_long_ones_are_never_kept(settings):
    from subscription_app import security

    assert forwarded_client("10.0.0.1", "192.0.2.10, 10.0.1.5", settings) == "192.0.2.10"
    kept = security._peer_trusted.cache_info().currsize  # the proxy and our second proxy
    forged = "1" * 10_000
    assert forwarded_client("10.0.0.1", f"192.0.2.10, {forged}", settings) == forged
    assert security._peer_trusted.cache_info().currsize == kept
