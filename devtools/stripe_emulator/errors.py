"""Errors shaped like Stripe's: declines are ``card_error``, unknown ids ``resource_missing``.

The specific declines of Stripe's test cards live in :mod:`.cards`.
"""

from __future__ import annotations

from localstripe import resources as ls

from devtools.stripe_emulator.common import UserError, _invalid

_orig_user_error_init = UserError.__init__


def _user_error_init(self, code, message=None, contents=None):
    _orig_user_error_init(self, code, message, contents)
    if code == 402:
        # Stripe reports declines as card errors; apps branch on this type.
        self.body["error"]["type"] = "card_error"
        if self.body["error"].get("code") == "card_declined":
            self.body["error"].setdefault("decline_code", "generic_decline")


_orig_retrieve = ls.StripeObject._api_retrieve.__func__


def _retrieve(cls, id):
    if not isinstance(id, str) or not id:
        raise _invalid(f"Invalid {cls.object} id", "id")
    try:
        return _orig_retrieve(cls, id)
    except UserError as e:
        if e.code != 404:
            raise
        raise UserError(
            404,
            f"No such {cls.object}: '{id}'",
            {"code": "resource_missing", "param": "id"},
        ) from None
