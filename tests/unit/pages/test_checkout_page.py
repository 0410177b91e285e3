"""The checkout page as compiled: what the browser gets before the login check ends."""

from subscription_app import routes
from subscription_app.pages.checkout import checkout
from subscription_app.state.auth import AuthState
from subscription_app.state.billing import CheckoutState


def test_the_card_scripts_are_fetched_while_the_login_is_checked():
    ahead, guarded = checkout().children
    fetched_ahead = str(ahead)
    # Both run as soon as they arrive, holding nothing up: Stripe.js, marked for checkout.js
    # to listen to, and checkout.js (it mounts the card from the server's HTML), at the
    # address naming its content.
    stripe_js = (
        f'jsx("script",{{async:true,"data-stripe-js":"page",src:{CheckoutState.stripe_js_url!s}}}'
    )
    helper = f'jsx("script",{{async:true,src:"{routes.CHECKOUT_SCRIPT}?v='
    assert stripe_js in fetched_ahead and helper in fetched_ahead
    # Stripe.js's tag comes first: checkout.js, running as soon as it arrives, looks for it
    # then (to listen to its outcome), and the parser may not have reached a later tag yet.
    assert fetched_ahead.index(stripe_js) < fetched_ahead.index(helper)
    assert "card-element" not in fetched_ahead  # nothing of the page itself
    assert "card-element" in str(guarded)


def test_the_card_field_is_shown_while_the_login_is_checked_and_left_to_stripe():
    _, guarded = checkout().children
    page = str(guarded)
    # Shown until the check says nobody is logged in, so it is in the server's HTML.
    assert str(AuthState.auth_checked) in page.split("?")[0]
    field = page[page.index('"aria-labelledby":"card-label"') :][:1500]  # its props
    # What checkout.js needs to mount it before the app is live, and inner HTML React
    # leaves alone (Stripe's inputs are not React's).
    assert '"data-publishable-key":' in field and '"data-js-url":' in field
    assert 'dangerouslySetInnerHTML:({ ["__html"] : "" })' in field


def test_the_login_check_is_announced_in_words():
    """While the login is checked, a protected page is a status region with words in it
    (a bare spinner has no name a screen reader announces)."""
    from subscription_app.pages.dashboard import dashboard

    page = str(dashboard())
    words = page.index("Checking your login")
    region = page[page.rindex("jsx(RadixThemesFlex", 0, words) : words]
    assert 'role:"status"' in region and '"aria-live":"polite"' in region
