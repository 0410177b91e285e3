"""HTML shared by the emulator's pages: hosted Checkout, the customer portal, hosted invoices.

Plain server-rendered pages that work without JavaScript and fit a phone: one
layout (:func:`_html_page`), the labelled card fields and what a submitted card
form holds (:func:`_card_fields`, :func:`_read_card_form`), the 3-D Secure
challenge, error pages and the formatting of amounts and dates. Every value put
into a page goes through :func:`_esc`.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

# Shown as the seller's name, like the business name on Stripe's pages.
BUSINESS_NAME = "Subscription App"

_CURRENCY_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "cad": "CA$", "aud": "A$"}
_ZERO_DECIMAL = frozenset({"jpy", "krw", "vnd", "clp", "xof", "xaf"})

_STYLE = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1a1a1a;background:#f6f8fa}
main{max-width:32rem;margin:0 auto;padding:1.25rem}
h1{font-size:1.4rem;margin:.25rem 0 1rem}
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
.seller{color:#555;margin:0}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:1rem;margin:0 0 1rem}
.price{font-size:1.6rem;font-weight:600;margin:0}
label{display:block;font-weight:500;margin:.75rem 0 .25rem}
input{width:100%;font:inherit;padding:.6rem .7rem;border:1px solid #b8bfc7;border-radius:6px}
input[readonly]{background:#eef1f4}
.row{display:flex;gap:.75rem}.row>div{flex:1}
button{font:inherit;font-weight:600;padding:.7rem 1rem;border-radius:6px;border:0;
background:#0a5bd3;color:#fff;cursor:pointer;margin-top:1rem}
button.full{width:100%}
button.secondary{background:#e6e9ee;color:#1a1a1a}
.message{background:#fdecea;color:#8a1c12;border-radius:6px;padding:.6rem .8rem}
.notice{background:#e7f5ec;color:#145c2e;border-radius:6px;padding:.6rem .8rem}
table{width:100%;border-collapse:collapse;font-size:.95rem}
th,td{text-align:left;padding:.4rem .3rem;border-bottom:1px solid #e3e6ea}
a{color:#0a5bd3}
.actions{display:flex;flex-wrap:wrap;gap:.75rem;align-items:center}
.muted{color:#555}
"""


def _esc(value: object) -> str:
    """``value`` as text safe inside HTML (element content or a quoted attribute)."""
    return html.escape("" if value is None else str(value), quote=True)


def _html_page(title: str, body: str, status: int = 200) -> web.Response:
    """A whole page; ``title`` is escaped here, ``body`` must already be safe HTML."""
    document = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{_esc(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
    return web.Response(
        text=document,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def _see_other(location: str) -> web.Response:
    """303: where the browser goes after a form was handled."""
    return web.Response(status=303, headers={"Location": location})


def _error_page(title: str, message: str, status: int = 404) -> web.Response:
    return _html_page(
        title,
        f'<p class="seller">{_esc(BUSINESS_NAME)}</p><h1>{_esc(title)}</h1><p>{_esc(message)}</p>',
        status,
    )


def _message(text: str | None) -> str:
    return f'<p class="message" role="alert">{_esc(text)}</p>' if text else ""


def _notice(text: str | None) -> str:
    return f'<p class="notice" role="status">{_esc(text)}</p>' if text else ""


# --------------------------------------------------------------------------
# Amounts and dates
# --------------------------------------------------------------------------


def _money(amount: int | None, currency: str | None) -> str:
    """``1200, "usd"`` -> ``$12.00``."""
    currency = (currency or "usd").lower()
    amount = amount or 0
    number = f"{amount:,}" if currency in _ZERO_DECIMAL else f"{amount / 100:,.2f}"
    symbol = _CURRENCY_SYMBOLS.get(currency)
    return f"{symbol}{number}" if symbol else f"{number} {currency.upper()}"


def _recurring(amount: int | None, currency: str | None, interval: str, count: int = 1) -> str:
    """``$12.00 / month``, ``$30.00 / 3 months``."""
    per = interval if count == 1 else f"{count} {interval}s"
    return f"{_money(amount, currency)} / {per}"


def _date(timestamp: int | None) -> str:
    """``July 4, 2026`` (UTC)."""
    if not timestamp:
        return ""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return f"{moment:%B} {moment.day}, {moment.year}"


# --------------------------------------------------------------------------
# Card forms
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CardForm:
    """What a submitted card form holds, checked."""

    number: str
    exp_month: int
    exp_year: int
    cvc: str
    name: str
    email: str | None


class _FormError(Exception):
    """A card form that cannot be used; ``str(error)`` is the message to show."""


def _card_fields(
    *,
    with_email: bool,
    email: str | None = None,
    email_locked: bool = False,
    name: str | None = None,
) -> str:
    """The labelled inputs of a card form (Email first when ``with_email``).

    ``email`` and ``name`` pre-fill those fields; card details never are.
    """
    parts = []
    if with_email:
        locked = " readonly" if email_locked else ""
        parts.append(
            '<label for="email">Email</label>'
            f'<input id="email" name="email" type="email" autocomplete="email" required'
            f' value="{_esc(email)}"{locked}>'
        )
    parts.append(
        '<label for="card_number">Card number</label>'
        '<input id="card_number" name="card_number" inputmode="numeric"'
        ' autocomplete="cc-number" placeholder="1234 1234 1234 1234" required>'
        '<div class="row"><div><label for="card_expiry">Expiry date</label>'
        '<input id="card_expiry" name="card_expiry" inputmode="numeric" autocomplete="cc-exp"'
        ' placeholder="MM / YY" required></div>'
        '<div><label for="card_cvc">CVC</label>'
        '<input id="card_cvc" name="card_cvc" inputmode="numeric" autocomplete="cc-csc"'
        ' placeholder="CVC" required></div></div>'
        '<label for="card_name">Cardholder name</label>'
        '<input id="card_name" name="card_name" autocomplete="cc-name"'
        f' placeholder="Full name on card" value="{_esc(name)}" required>'
    )
    return "".join(parts)


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _read_expiry(text: str) -> tuple[int, int]:
    if "/" in text:
        month_text, _, year_text = text.partition("/")
        month_text, year_text = month_text.strip(), year_text.strip()
    else:
        digits = re.sub(r"\s", "", text)
        month_text, year_text = digits[:2], digits[2:]
    if not (month_text.isdigit() and year_text.isdigit() and len(year_text) in (2, 4)):
        raise _FormError("Your card's expiration date is incomplete.")
    month, year = int(month_text), int(year_text)
    if not 1 <= month <= 12:
        raise _FormError("Your card's expiration month is invalid.")
    if year < 100:
        year += 2000
    now = time.gmtime()
    if (year, month) < (now.tm_year, now.tm_mon):
        raise _FormError("Your card's expiration date is in the past.")
    if year > now.tm_year + 50 or year >= 2100:
        raise _FormError("Your card's expiration year is invalid.")
    return month, year


def _read_card_form(form: Mapping[str, str], *, with_email: bool) -> CardForm:
    """Check a submitted card form; raises :class:`_FormError` with Stripe's wording."""
    email = None
    if with_email:
        email = (form.get("email") or "").strip()
        if not email:
            raise _FormError("Enter your email address.")
        if not _EMAIL.match(email):
            raise _FormError("Your email address is invalid.")

    number = re.sub(r"[\s-]", "", form.get("card_number") or "")
    if not number:
        raise _FormError("Enter your card number.")
    if not number.isdigit():
        raise _FormError("Your card number is invalid.")
    if len(number) < 16:
        raise _FormError("Your card number is incomplete.")
    if len(number) > 16 or not _luhn_ok(number):
        raise _FormError("Your card number is invalid.")

    exp_month, exp_year = _read_expiry((form.get("card_expiry") or "").strip())

    cvc = (form.get("card_cvc") or "").strip()
    if not cvc.isdigit() or len(cvc) < 3:
        raise _FormError("Your card's security code is incomplete.")
    if len(cvc) > 3:
        raise _FormError("Your card's security code is invalid.")

    name = " ".join((form.get("card_name") or "").split())
    if not name:
        raise _FormError("Enter the cardholder name.")
    return CardForm(number, exp_month, exp_year, cvc, name, email)


# --------------------------------------------------------------------------
# 3-D Secure
# --------------------------------------------------------------------------

AUTHENTICATION_FAILED = (
    "We are unable to authenticate your payment method. "
    "Please choose a different payment method and try again."
)


def _challenge_page(action: str, what: str) -> web.Response:
    """The issuer's 3-D Secure test page: two buttons posting ``result`` to ``action``."""
    body = (
        '<p class="seller">3D Secure 2 test page</p>'
        "<h1>Authenticate this payment</h1>"
        f'<div class="card"><p>{_esc(what)}</p>'
        "<p class=muted>This is a test: choose how the cardholder answers.</p>"
        f'<form method="post" action="{_esc(action)}" class="actions">'
        '<button type="submit" name="result" value="complete">Complete authentication</button>'
        '<button type="submit" name="result" value="fail" class="secondary">'
        "Fail authentication</button></form></div>"
    )
    return _html_page("3D Secure authentication", body)
