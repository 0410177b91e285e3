"""Read the emulator's HTML pages the way a person would: labels, buttons, links, forms.

A small ``html.parser`` reader, enough for server-rendered pages without
JavaScript, and :func:`submit` to send one of their forms with ``httpx``.
"""

from __future__ import annotations

import html.parser
import urllib.parse
from dataclasses import dataclass, field

import httpx


@dataclass
class Form:
    action: str
    method: str
    inputs: list[dict[str, str]] = field(default_factory=list)
    buttons: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Page:
    url: str
    status: int
    text: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # label text -> input id
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> attributes
    links: list[tuple[str, str]] = field(default_factory=list)  # (text, href)
    forms: list[Form] = field(default_factory=list)
    tags: set[str] = field(default_factory=set)

    def field(self, label: str) -> dict[str, str]:
        """The attributes of the input labelled ``label`` (exactly)."""
        assert label in self.labels, f"no field labelled {label!r} among {list(self.labels)}"
        return self.inputs[self.labels[label]]

    def link(self, name: str) -> str:
        """The href of the link named ``name`` (or starting with it, if ``name`` ends in ...)."""
        prefix = name.removesuffix("...")
        for text, href in self.links:
            if text == name or (name.endswith("...") and text.startswith(prefix)):
                return href
        raise AssertionError(f"no link {name!r} among {[t for t, _ in self.links]}")

    def buttons(self) -> list[str]:
        return [button["text"] for form in self.forms for button in form.buttons]

    def form_of(self, button: str) -> Form:
        for form in self.forms:
            if any(b["text"] == button for b in form.buttons):
                return form
        raise AssertionError(f"no button {button!r} among {self.buttons()}")


class _Reader(html.parser.HTMLParser):
    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self.text: list[str] = []
        self.skip = 0  # inside <style>, <script> or <title>
        self.form: Form | None = None
        # Text being gathered for an open <label>, <a> or <button>.
        self.open: list[tuple[str, dict[str, str], list[str]]] = []

    def handle_starttag(self, tag, attrs):
        attributes = {k: (v if v is not None else "") for k, v in attrs}
        self.page.tags.add(tag)
        if tag in ("style", "script", "title"):
            self.skip += 1
        elif tag == "form":
            self.form = Form(attributes.get("action", ""), attributes.get("method", "get").lower())
            self.page.forms.append(self.form)
        elif tag == "input":
            if "id" in attributes:
                self.page.inputs[attributes["id"]] = attributes
            if self.form is not None:
                self.form.inputs.append(attributes)
        elif tag in ("label", "a", "button"):
            self.open.append((tag, attributes, []))

    def handle_endtag(self, tag):
        if tag in ("style", "script", "title"):
            self.skip -= 1
        elif tag == "form":
            self.form = None
        elif tag in ("label", "a", "button") and self.open and self.open[-1][0] == tag:
            _, attributes, parts = self.open.pop()
            text = " ".join("".join(parts).split())
            if tag == "label":
                self.page.labels[text] = attributes.get("for", "")
            elif tag == "a":
                self.page.links.append((text, attributes.get("href", "")))
            elif self.form is not None:
                self.form.buttons.append({**attributes, "text": text})

    def handle_data(self, data):
        if self.skip:
            return
        self.text.append(data)
        for _, _, parts in self.open:
            parts.append(data)


def read_page(response: httpx.Response) -> Page:
    page = Page(url=str(response.url), status=response.status_code)
    reader = _Reader(page)
    reader.feed(response.text)
    page.text = " ".join(" ".join(reader.text).split())
    return page


def submit(
    http: httpx.Client, page: Page, button: str, fields: dict[str, str] | None = None
) -> httpx.Response:
    """Click ``button``: send its form with ``fields`` (label -> value) typed in.

    Inputs not typed into keep their value (a pre-filled email...). Redirects are
    not followed, so the caller sees the 303.
    """
    form = page.form_of(button)
    values = {i["name"]: i.get("value", "") for i in form.inputs if "name" in i}
    for label, value in (fields or {}).items():
        values[page.field(label)["name"]] = value
    clicked = next(b for b in form.buttons if b["text"] == button)
    if clicked.get("name"):
        values[clicked["name"]] = clicked.get("value", "")
    target = urllib.parse.urljoin(page.url, form.action or page.url)
    if form.method == "post":
        return http.post(target, data=values)
    return http.get(target, params=values)
