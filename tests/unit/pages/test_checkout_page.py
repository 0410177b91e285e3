"""The checkout page as compiled: what the browser gets before the login check ends."""

from subscription_app import routes
from subscription_app.pages.checkout import checkout
from subscription_app.state.billing import CheckoutState


def test_the_card_scripts_are_fetched_while_the_login_is_checked():
    ahead, guarded = checkout().children
    fetched_ahead = str(ahead)
    # Preloaded (fetched, not run) outside the login guard: the card field, once shown,
    # mounts without fetching them first.
    assert f'jsx("link",{{as:"script",href:"{routes.CHECKOUT_SCRIPT}",rel:"preload"}}' in (
        fetched_ahead
    )
    assert str(CheckoutState.stripe_js_url) in fetched_ahead
    assert "card-element" not in fetched_ahead  # nothing of the page itself
    assert "card-element" in str(guarded)
