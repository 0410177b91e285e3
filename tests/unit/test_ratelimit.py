"""`ratelimit`'s pure parts: what a client address is counted as."""

from subscription_app import ratelimit


def test_an_ipv6_address_is_also_counted_by_its_56_and_48_with_larger_allowances():
    assert ratelimit._counted_as("2001:db8:1:2::/64") == [
        ("2001:db8:1:2::/64", 1),
        ("2001:db8:1::/56", 4),
        ("2001:db8:1::/48", 16),
    ]
    assert ratelimit._counted_as("198.51.100.7") == [("198.51.100.7", 1)]
    assert ratelimit._counted_as("not an address") == [("not an address", 1)]
