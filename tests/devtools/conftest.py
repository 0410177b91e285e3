"""Fixtures shared by the emulator's tests: one emulator subprocess per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stripe

from devtools.liveapp import free_port
from devtools.stripe_emulator import EmulatorProcess, start_in_background


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with start_in_background(free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def client(emulator: EmulatorProcess) -> stripe.StripeClient:
    # No retries: a failing request must fail the test, not be replayed.
    return stripe.StripeClient(
        "sk_test_12345",
        base_addresses={"api": emulator.url},
        max_network_retries=0,
    )
