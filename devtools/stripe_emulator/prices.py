"""Products and prices: the Prices API (``/v1/prices``).

Each price is a view of a localstripe Plan with the same id, so subscriptions,
invoices and the Plans API all see the same object.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from localstripe import resources as ls

from devtools.stripe_emulator.common import (
    UserError,
    _as_bool,
    _invalid,
    _json,
    _reject_unknown,
    _route,
    ls_server,
)
from devtools.stripe_emulator.index import objects_of
from devtools.stripe_emulator.webhooks import _changed_fields, _schedule_event


class Price(ls.StripeObject):
    """A Stripe Price view of a localstripe Plan with the same id.

    Never stored itself (``__init__`` does not register it with the store):
    the Plan is the single source of truth, so subscriptions, invoices and
    the Plans API all see the same object. The price-only ``lookup_key`` and
    ``tax_behavior`` live on the plan as private attributes, which keeps the
    persisted state loadable by plain localstripe.
    """

    object = "price"
    _id_prefix = "price_"

    def __init__(self, plan: ls.Plan) -> None:
        self.id = plan.id
        self._plan = plan

    @classmethod
    def _api_retrieve(cls, id):
        plan = ls.store.get("plan:" + id) if isinstance(id, str) else None
        if plan is None:
            raise UserError(
                404,
                f"No such price: '{id}'",
                {"code": "resource_missing", "param": "price"},
            )
        return cls(plan)

    @property
    def created(self):
        return self._plan.created

    @property
    def livemode(self):
        return False

    @property
    def active(self):
        return self._plan.active

    @property
    def billing_scheme(self):
        return self._plan.billing_scheme

    @property
    def currency(self):
        return self._plan.currency

    @property
    def custom_unit_amount(self):
        return None

    @property
    def lookup_key(self):
        return getattr(self._plan, "_lookup_key", None)

    @property
    def metadata(self):
        return dict(self._plan.metadata or {})

    @property
    def nickname(self):
        return self._plan.nickname

    @property
    def product(self):
        return self._plan.product

    @property
    def recurring(self):
        return {
            "interval": self._plan.interval,
            "interval_count": self._plan.interval_count,
            "meter": None,
            "trial_period_days": self._plan.trial_period_days,
            "usage_type": self._plan.usage_type,
        }

    @property
    def tax_behavior(self):
        return getattr(self._plan, "_tax_behavior", "unspecified")

    @property
    def tiers_mode(self):
        return self._plan.tiers_mode

    @property
    def transform_quantity(self):
        return None

    @property
    def type(self):
        return "recurring"

    @property
    def unit_amount(self):
        return self._plan.amount

    @property
    def unit_amount_decimal(self):
        return None if self._plan.amount is None else str(self._plan.amount)


_PRICE_CREATE_PARAMS = frozenset(
    {
        "active",
        "currency",
        "lookup_key",
        "metadata",
        "nickname",
        "product",
        "product_data",
        "recurring",
        "tax_behavior",
        "transfer_lookup_key",
        "unit_amount",
    }
)
_PRICE_UPDATE_PARAMS = frozenset(
    {
        "active",
        "lookup_key",
        "metadata",
        "nickname",
        "tax_behavior",
        "transfer_lookup_key",
    }
)
_TAX_BEHAVIORS = ("exclusive", "inclusive", "unspecified")


def _product_name(plan: ls.Plan) -> str:
    """The name customers see for a price: its product's, else its nickname."""
    product = ls.store.get(f"product:{plan.product}") if isinstance(plan.product, str) else None
    return getattr(product, "name", None) or plan.nickname or plan.id


def _plans() -> list[ls.Plan]:
    return objects_of("plan")


def _claim_lookup_key(lookup_key: Any, transfer: bool | None, owner_id: str | None):
    """Validate ``lookup_key``; with ``transfer`` take it from its current price."""
    if lookup_key is None or lookup_key == "":
        return None
    if not isinstance(lookup_key, str) or len(lookup_key) > 200:
        raise _invalid("Invalid lookup_key", "lookup_key")
    for plan in _plans():
        if plan.id != owner_id and getattr(plan, "_lookup_key", None) == lookup_key:
            if not transfer:
                raise _invalid(
                    f"A price (`{plan.id}`) already uses that lookup key.",
                    "lookup_key",
                    "lookup_key_already_exists",
                )
            plan._lookup_key = None
    return lookup_key


def _merge_metadata(current: dict | None, update: Any) -> dict:
    # Stripe semantics: keys are merged, an empty value deletes a key and an
    # empty string for the whole object clears it.
    if update == "":
        return {}
    if not isinstance(update, dict):
        raise _invalid("Invalid metadata", "metadata")
    merged = dict(current or {})
    for key, value in update.items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


@_route("POST", "/v1/prices")
async def _create_price(request: web.Request) -> web.Response:
    data = dict(await ls_server.get_post_data(request) or {})
    expand = data.pop("expand", None)
    _reject_unknown(data, _PRICE_CREATE_PARAMS)

    currency = data.get("currency")
    if not isinstance(currency, str) or not currency:
        raise _invalid("Missing required param: currency.", "currency", "parameter_missing")
    unit_amount = ls.try_convert_to_int(data.get("unit_amount"))
    if unit_amount is None:
        raise _invalid("Missing required param: unit_amount.", "unit_amount", "parameter_missing")
    if not isinstance(unit_amount, int) or unit_amount < 0:
        raise _invalid("Invalid integer: unit_amount", "unit_amount")

    recurring = data.get("recurring")
    if not isinstance(recurring, dict):
        # Prices are plans here, and localstripe plans are always recurring.
        raise _invalid(
            "The Stripe emulator only supports recurring prices: pass recurring[interval].",
            "recurring",
        )
    _reject_unknown(recurring, {"interval", "interval_count", "usage_type"})
    interval = recurring.get("interval")
    if interval not in ("day", "week", "month", "year"):
        raise _invalid("Invalid recurring[interval]", "recurring[interval]")
    interval_count = ls.try_convert_to_int(recurring.get("interval_count", 1))
    if not isinstance(interval_count, int) or interval_count < 1:
        raise _invalid("Invalid recurring[interval_count]", "recurring[interval_count]")
    if recurring.get("usage_type", "licensed") != "licensed":
        raise _invalid(
            "The Stripe emulator only supports licensed prices.",
            "recurring[usage_type]",
        )

    product = data.get("product")
    product_data = data.get("product_data")
    if (product is None) == (product_data is None):
        raise _invalid("You must specify exactly one of product or product_data.", "product")
    if product is not None:
        ls.Product._api_retrieve(product)  # 404 when it does not exist
    elif not isinstance(product_data, dict) or not product_data.get("name"):
        raise _invalid("Missing required param: product_data[name].", "product_data[name]")

    nickname = data.get("nickname")
    if nickname is not None and not isinstance(nickname, str):
        raise _invalid("Invalid nickname", "nickname")
    metadata = _merge_metadata({}, data.get("metadata") or {})
    active = _as_bool(data.get("active", True), "active")
    tax_behavior = data.get("tax_behavior", "unspecified")
    if tax_behavior not in _TAX_BEHAVIORS:
        raise _invalid("Invalid tax_behavior", "tax_behavior")
    transfer = _as_bool(data.get("transfer_lookup_key"), "transfer_lookup_key")
    lookup_key = _claim_lookup_key(data.get("lookup_key"), transfer, None)

    # All validation is done: from here on objects get created.
    if product is None:
        product = ls.Product(name=product_data["name"], metadata=product_data.get("metadata")).id
    plan = ls.Plan(
        id="price_" + ls.random_id(24),
        product=product,
        amount=unit_amount,
        currency=currency.lower(),
        interval=interval,
        interval_count=interval_count,
        nickname=nickname,
        metadata=metadata,
        active=active,
    )
    plan._lookup_key = lookup_key
    plan._tax_behavior = tax_behavior
    price = Price(plan)
    _schedule_event("price.created", price)
    return _json(price, expand)


@_route("GET", "/v1/prices/{id}")
async def _retrieve_price(request: web.Request, id: str) -> web.Response:
    data = ls_server.unflatten_data(request.query) or {}
    return _json(Price._api_retrieve(id), data.pop("expand", None))


@_route("POST", "/v1/prices/{id}")
async def _update_price(request: web.Request, id: str) -> web.Response:
    data = dict(await ls_server.get_post_data(request) or {})
    expand = data.pop("expand", None)
    _reject_unknown(data, _PRICE_UPDATE_PARAMS)
    price = Price._api_retrieve(id)
    plan = price._plan
    before = price._export()

    active = _as_bool(data.get("active"), "active")
    tax_behavior = data.get("tax_behavior")
    if tax_behavior is not None and tax_behavior not in _TAX_BEHAVIORS:
        raise _invalid("Invalid tax_behavior", "tax_behavior")
    if "lookup_key" in data:
        transfer = _as_bool(data.get("transfer_lookup_key"), "transfer_lookup_key")
        plan._lookup_key = _claim_lookup_key(data["lookup_key"], transfer, plan.id)
    if active is not None:
        plan.active = active
    if "nickname" in data:
        plan.nickname = data["nickname"] or None
    if "metadata" in data:
        plan.metadata = _merge_metadata(plan.metadata, data["metadata"])
    if tax_behavior is not None:
        plan._tax_behavior = tax_behavior

    _schedule_event("price.updated", price, _changed_fields(before, price._export()))
    return _json(price, expand)


@_route("GET", "/v1/prices")
async def _list_prices(request: web.Request) -> web.Response:
    data = ls_server.unflatten_data(request.query) or {}
    expand = data.pop("expand", None)
    _reject_unknown(
        data,
        {
            "active",
            "currency",
            "limit",
            "lookup_keys",
            "product",
            "starting_after",
            "type",
        },
    )
    active = _as_bool(data.get("active"), "active")
    lookup_keys = data.get("lookup_keys")
    if isinstance(lookup_keys, str):
        lookup_keys = [lookup_keys]
    if lookup_keys is not None and (not isinstance(lookup_keys, list) or len(lookup_keys) > 10):
        raise _invalid("lookup_keys must be a list of at most 10 keys", "lookup_keys")

    prices = [Price(plan) for plan in _plans()]
    if active is not None:
        prices = [p for p in prices if p.active == active]
    if lookup_keys is not None:
        prices = [p for p in prices if p.lookup_key in lookup_keys]
    if data.get("product") is not None:
        prices = [p for p in prices if p.product == data["product"]]
    if data.get("currency") is not None:
        prices = [p for p in prices if p.currency == data["currency"].lower()]
    if data.get("type") == "one_time":
        prices = []
    # Stripe lists newest first; the store keeps insertion order.
    prices.reverse()

    result = ls.List(
        "/v1/prices", limit=data.get("limit"), starting_after=data.get("starting_after")
    )
    result._list = prices
    return _json(result, expand)
