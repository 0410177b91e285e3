"""What the README tells people to configure matches what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from subscription_app.billing import handlers

README = Path(__file__).resolve().parents[2] / "README.md"
ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def test_the_readme_lists_every_webhook_event_the_app_handles_and_no_other():
    """A merchant selects the events in Stripe's dashboard from this list: one missing there
    (say customer.subscription.updated) silently never reaches the app."""
    text = README.read_text()
    listed = re.search(r"<!-- webhook-events:.*?-->\s*```text\n(.*?)```", text, re.S)
    assert listed, "the README's list of webhook events is gone"
    assert listed.group(1).split() == handlers.handled_types()


def test_a_copy_of_env_example_does_not_choose_development():
    """Copied to .env with a public APP_URL, it must fail closed (APP_ENV unset is refused
    for a non-localhost URL), not run with development defaults."""
    for line in ENV_EXAMPLE.read_text().splitlines():
        assert not line.strip().startswith("APP_ENV="), line
