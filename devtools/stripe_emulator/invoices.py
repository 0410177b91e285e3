"""Invoices as customers see them: numbers, the hosted invoice page and the PDF.

An invoice gets its ``number`` (``EMU-0001``, ``EMU-0002``... unique and
increasing) when it stops being a draft, and with it a ``hosted_invoice_url``
(``/invoice/{id}``, a page served here) and an ``invoice_pdf``
(``/invoice/{id}/pdf``, a small real PDF); drafts have none of the three, as on
Stripe. Finalizing sends ``invoice.finalized``. ``GET /v1/invoices`` lists
newest first and filters by ``status`` too.
"""

from __future__ import annotations

import time

from aiohttp import web
from localstripe import resources as ls

from devtools.stripe_emulator.common import _invalid, _page_route, _public_url
from devtools.stripe_emulator.index import (
    current_index,
    customer_objects,
    objects_of,
    on_change,
    store_position,
)
from devtools.stripe_emulator.pages import (
    BUSINESS_NAME,
    _date,
    _error_page,
    _esc,
    _html_page,
    _money,
)
from devtools.stripe_emulator.prices import _product_name
from devtools.stripe_emulator.webhooks import _schedule_event

NUMBER_PREFIX = "EMU-"
_STATUSES = ("draft", "open", "paid", "uncollectible", "void")

# --------------------------------------------------------------------------
# Numbers, URLs and invoice.finalized
# --------------------------------------------------------------------------


def _number_value(invoice: object) -> int | None:
    number = getattr(invoice, "number", None)
    if isinstance(number, str) and number.startswith(NUMBER_PREFIX):
        suffix = number[len(NUMBER_PREFIX) :]
        if suffix.isdigit():
            return int(suffix)
    return None


class _Numbers:
    """The numbers of the stored invoices, kept by the store's index (see
    :func:`devtools.stripe_emulator.index.on_change`) so that numbering the next one
    does not go through every invoice: one after the highest stored."""

    def __init__(self, index) -> None:
        self.by_key = {
            key: n
            for key, obj in index.by_type.get("invoice", {}).items()
            if (n := _number_value(obj)) is not None
        }
        self.highest: int | None = max(self.by_key.values(), default=0)

    @classmethod
    def of(cls, index) -> _Numbers:
        numbers = index.extra.get("invoice_numbers")
        if numbers is None:
            numbers = index.extra["invoice_numbers"] = cls(index)
        return numbers

    @staticmethod
    def changed(index, key: str, invoice: object | None) -> None:
        numbers = index.extra.get("invoice_numbers")
        if numbers is None:
            return  # built from the stored invoices when first needed
        new = None if invoice is None else _number_value(invoice)
        old = numbers.by_key.pop(key, None)
        if new is not None:
            numbers.by_key[key] = new
        if numbers.highest is None:
            return
        if new is not None and new > numbers.highest:
            numbers.highest = new
        elif old is not None and old == numbers.highest and (new is None or new < old):
            numbers.highest = None  # the highest went: found again when next needed

    def next(self) -> int:
        if self.highest is None:
            self.highest = max(self.by_key.values(), default=0)
        return self.highest + 1


on_change("invoice", {"number"}, _Numbers.changed)


def _next_number() -> str:
    """One after the highest number of the stored invoices."""
    return f"{NUMBER_PREFIX}{_Numbers.of(current_index()).next():04d}"


def _get_draft(self) -> bool:
    return self.__dict__.get("_draft", True)


def _set_draft(self, value: bool) -> None:
    # localstripe sets `_draft = False` wherever an invoice stops being a draft
    # (finalizing, paying or voiding it), so that is where it gets its number.
    # Kept in the instance dict under the same name: state files stay plain
    # localstripe pickles.
    self.__dict__["_draft"] = value
    if not value and self.__dict__.get("number") is None:
        self.number = _next_number()
        transitions = self.__dict__.get("status_transitions")
        if isinstance(transitions, dict) and not transitions.get("finalized_at"):
            transitions["finalized_at"] = int(time.time())


# Installed as ls.Invoice._draft: see _set_draft.
_draft_property = property(_get_draft, _set_draft)


def _invoice_hosted_url(self) -> str | None:
    if getattr(self, "number", None) is None or not self.id:
        return None
    return _public_url(f"/invoice/{self.id}")


def _invoice_pdf_url(self) -> str | None:
    if getattr(self, "number", None) is None or not self.id:
        return None
    return _public_url(f"/invoice/{self.id}/pdf")


_orig_invoice_finalize = ls.Invoice._finalize


def _invoice_finalize(self) -> None:
    _orig_invoice_finalize(self)
    _schedule_event("invoice.finalized", self)


_orig_invoice_list = ls.Invoice._api_list_all.__func__


def _invoice_list(cls, url, status=None, **kwargs):
    if status is not None and status not in _STATUSES:
        raise _invalid(f"Invalid status: must be one of {', '.join(_STATUSES)}", "status")
    allowed = {"customer", "subscription", "limit", "starting_after"}
    for key in kwargs:
        if key not in allowed:
            raise _invalid(f"Received unknown parameter: {key}", key, "parameter_unknown")
    result = _orig_invoice_list(cls, url, **kwargs)
    if status is not None:
        result._list = [i for i in result._list if i.status == status]
    # Newest first, also among invoices of the same second (store order = creation order).
    result._list.sort(key=lambda i: (i.date, i.created, store_position(i) or 0), reverse=True)
    return result


def _invoices(customer: str | None = None) -> list[ls.Invoice]:
    """Invoices in the store, oldest first; only ``customer``'s if given."""
    return objects_of("invoice") if customer is None else customer_objects("invoice", customer)


def _customer_invoices(customer: str) -> list[ls.Invoice]:
    """``customer``'s finalized invoices, newest first (what the portal lists)."""
    found = [i for i in _invoices(customer) if i.number is not None]
    position = {obj.id: n for n, obj in enumerate(found)}
    found.sort(key=lambda i: (i.date, i.created, position[i.id]), reverse=True)
    return found


# --------------------------------------------------------------------------
# What the pages show
# --------------------------------------------------------------------------

STATUS_LABELS = {
    "draft": "Draft",
    "open": "Open",
    "paid": "Paid",
    "uncollectible": "Uncollectible",
    "void": "Void",
}


def _line_descriptions(invoice: ls.Invoice) -> list[tuple[str, str]]:
    lines = []
    for line in invoice.lines._list:
        name = _product_name(line.plan) if line.plan is not None else line.description
        quantity = f" x {line.quantity}" if (line.quantity or 1) != 1 else ""
        lines.append((f"{name or 'Item'}{quantity}", _money(line.amount, line.currency)))
    return lines


def _published(id: str) -> ls.Invoice | None:
    """The invoice behind a hosted page: unknown ids and drafts have none."""
    invoice = ls.store.get("invoice:" + id)
    if invoice is None or invoice.number is None:
        return None
    return invoice


@_page_route("GET", "/invoice/{id}")
async def _hosted_invoice_page(request: web.Request, id: str) -> web.Response:
    invoice = _published(id)
    if invoice is None:
        return _error_page("Invoice not found", "This invoice does not exist.")
    customer = ls.store.get("customer:" + invoice.customer)
    rows = "".join(
        f"<tr><td>{_esc(name)}</td><td>{_esc(amount)}</td></tr>"
        for name, amount in _line_descriptions(invoice)
    )
    paid = invoice.status == "paid"
    status = STATUS_LABELS.get(invoice.status, invoice.status)
    body = (
        f'<p class="seller">{_esc(BUSINESS_NAME)}</p>'
        f"<h1>Invoice {_esc(invoice.number)}</h1>"
        '<div class="card">'
        f'<p class="price">{_esc(_money(invoice.total, invoice.currency))}</p>'
        f"<p>{'Paid' if paid else 'Due'} {_esc(_date(invoice.date))}</p>"
        "<table><tbody>"
        f"<tr><th>Invoice number</th><td>{_esc(invoice.number)}</td></tr>"
        f"<tr><th>Date</th><td>{_esc(_date(invoice.date))}</td></tr>"
        f"<tr><th>Amount</th><td>{_esc(_money(invoice.total, invoice.currency))}</td></tr>"
        f"<tr><th>Status</th><td>{_esc(status)}</td></tr>"
        f"<tr><th>Billed to</th><td>{_esc(getattr(customer, 'email', None) or '')}</td></tr>"
        "</tbody></table></div>"
        '<h2>Items</h2><div class="card"><table><thead><tr><th>Description</th><th>Amount</th>'
        f"</tr></thead><tbody>{rows}</tbody></table></div>"
        f'<p><a href="{_esc(invoice.invoice_pdf)}">Download PDF</a></p>'
    )
    return _html_page(f"Invoice {invoice.number}", body)


@_page_route("GET", "/invoice/{id}/pdf")
async def _invoice_pdf_route(request: web.Request, id: str) -> web.Response:
    invoice = _published(id)
    if invoice is None:
        return _error_page("Invoice not found", "This invoice does not exist.")
    customer = ls.store.get("customer:" + invoice.customer)
    lines = [
        BUSINESS_NAME,
        f"Invoice {invoice.number}",
        "",
        f"Invoice number: {invoice.number}",
        f"Date: {_date(invoice.date)}",
        f"Billed to: {getattr(customer, 'email', None) or ''}",
        f"Status: {STATUS_LABELS.get(invoice.status, invoice.status)}",
        "",
        *(f"{name}   {amount}" for name, amount in _line_descriptions(invoice)),
        "",
        f"Total: {_money(invoice.total, invoice.currency)}",
    ]
    return web.Response(
        body=_pdf(lines),
        content_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{invoice.number}.pdf"'},
    )


# --------------------------------------------------------------------------
# A minimal PDF
# --------------------------------------------------------------------------


def _pdf_text(text: str) -> bytes:
    """``text`` as a PDF string literal's content (Latin-1, special characters escaped)."""
    text = text.replace("€", "EUR ")
    raw = text.encode("latin-1", errors="replace")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def _pdf(lines: list[str]) -> bytes:
    """A one-page PDF (US Letter, Helvetica) showing ``lines``, uncompressed.

    Hand-written: a catalog, a page tree, one page, a standard font and the
    page's content stream, with a correct cross-reference table.
    """
    text = [b"BT", b"/F1 18 Tf", b"72 720 Td", b"22 TL"]
    for index, line in enumerate(lines):
        if index == 1:
            text.append(b"/F1 12 Tf 16 TL")
        text.append(b"(" + _pdf_text(line) + b") Tj T*")
    text.append(b"ET")
    content = b"\n".join(text)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        b" /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
