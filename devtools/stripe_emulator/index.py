"""The store's index: stored objects by type and by customer, so no call scans the whole store.

localstripe keeps every object in one dict, ``store``, keyed ``"<object type>:<id>"``,
and finds the objects of a type by testing every key (``StripeObject._api_list_all``,
which every list builds on: a customer's subscriptions, exported with each customer,
its invoices and invoice items, read when a subscription is created, its payment
methods...). So every such call cost in proportion to everything stored.

:func:`install` makes ``store`` keep an index beside its contents (patching
``localstripe.resources.Store``, the class of ``store``, in place):

* objects by type, ``{object type: {key: object}}``, each in store order;
* objects by type and customer, ``{(object type, customer id): {key: object}}``, for
  objects with a ``customer`` id. An object's customer can change after it was stored
  (localstripe sets it after storing the object, attaching a payment method sets it
  later): ``StripeObject.__setattr__`` files the object again whenever its
  ``customer`` is set.

Every way of changing the store keeps the index right: setting and deleting items,
``clear``, ``update`` (how a state file is loaded), ``pop``, ``popitem``,
``setdefault``, ``|=``. The index is built lazily from the store's contents the first
time it is needed (after ``clear`` or ``update`` too), so a store filled any other
way (unpickled, a plain dict loaded from an older state file) is indexed correctly.
It lives in the store's instance dict but is never pickled: state files stay
localstripe's format, a pickled ``Store`` exactly as before.

Then:

* ``StripeObject._api_list_all`` (under every list) takes the objects of its type
  from the index: in store order, as localstripe's scan found them;
* the lists that keep only one customer's objects when given ``customer``
  (subscriptions, invoices, invoice items, payment methods, charges) are wrapped by
  :func:`scoped_to_customer`: with a customer id, the list underneath starts from that
  customer's objects only. Each of them then filters on ``obj.customer == customer``
  as before, which now keeps everything, so results (and their order, pagination and
  other filters) are the same;
* our own handlers use :func:`objects_of` and :func:`customer_objects`;
* what other modules derive from the stored objects is kept up to date by listeners
  (:func:`on_change`): the highest invoice number (:mod:`.invoices`) is no longer
  found by going through every invoice. Checkout Sessions due to expire are kept by
  expiry time in :mod:`.checkout` (rebuilt whenever the index is).

Listing objects of one type costs in proportion to how many there are of that type,
listing a customer's objects in proportion to that customer's. What still goes
through every object of a type: listing them all (``GET /v1/customers``, events...),
filters other than the customer (``email``, ``subscription``, ``charge``...), and
``starting_after`` (localstripe looks for that id in the list).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from localstripe import resources as ls

from devtools.stripe_emulator.common import UserError

# Where a store keeps its index (in its instance dict, left out of pickles).
_ATTR = "_emulator_index"


def _type_of(key: Any) -> str | None:
    """The object type a store key files its object under (``None``: not indexed)."""
    if not isinstance(key, str):
        return None
    object_type, colon, _ = key.partition(":")
    # localstripe's scan tests key.startswith(object + ":"): "balance" is no type's.
    return object_type if colon else None


def _customer_of(obj: Any) -> str | None:
    customer = getattr(obj, "customer", None)
    # localstripe's filters compare obj.customer with an id (a non-empty string).
    return customer if isinstance(customer, str) and customer else None


# What other modules derive from the stored objects of a type, kept up to date here:
# object type -> listeners called with (index, key, object) when an object of that type
# is stored, replaced or one of the watched attributes of it is set, and with (index,
# key, None) when it leaves the store. They keep their state in ``index.extra`` (gone
# with the index when it is rebuilt, so they must also be able to rebuild it).
Listener = Callable[["_Index", str, Any], None]
_listeners: dict[str, list[Listener]] = {}
# Attributes whose setting refreshes the object in the index ("customer" files it).
_watched: set[str] = {"customer"}


def on_change(object_type: str, attributes: set[str], listener: Listener) -> None:
    """Call ``listener`` as objects of ``object_type`` come, change ``attributes``, go."""
    _listeners.setdefault(object_type, []).append(listener)
    _watched.update(attributes)


class _Index:
    """What one store holds, by type and by (type, customer)."""

    __slots__ = ("_counter", "by_customer", "by_type", "extra", "filed_under", "position")

    def __init__(self) -> None:
        self.by_type: dict[str, dict[str, Any]] = {}
        self.by_customer: dict[tuple[str, str], dict[str, Any]] = {}
        # key -> the (type, customer) it is filed under in by_customer.
        self.filed_under: dict[str, tuple[str, str]] = {}
        # key -> when it entered the store (store order across a type's customers).
        self.position: dict[str, int] = {}
        self._counter = itertools.count()
        # The listeners' state (see on_change).
        self.extra: dict[str, Any] = {}

    def put(self, key: Any, obj: Any) -> None:
        """``store[key] = obj`` happened."""
        object_type = _type_of(key)
        if object_type is None:
            return
        bucket = self.by_type.setdefault(object_type, {})
        if key not in bucket:
            self.position[key] = next(self._counter)
        # Like the store: a new key goes last, replacing a value keeps its place.
        bucket[key] = obj
        self.refresh(key, object_type, obj)

    def discard(self, key: Any) -> None:
        """``key`` left the store."""
        object_type = _type_of(key)
        if object_type is None:
            return
        bucket = self.by_type.get(object_type)
        if bucket is None or key not in bucket:
            return
        del bucket[key]
        if not bucket:
            del self.by_type[object_type]
        del self.position[key]
        self._unfile(key)
        for listener in _listeners.get(object_type, ()):
            listener(self, key, None)

    def refresh(self, key: str, object_type: str, obj: Any) -> None:
        """The object stored at ``key`` is new, or one of its watched attributes was set."""
        self._file(key, object_type, obj)
        for listener in _listeners.get(object_type, ()):
            listener(self, key, obj)

    def _file(self, key: str, object_type: str, obj: Any) -> None:
        """File the object stored at ``key`` under its current customer (if any)."""
        customer = _customer_of(obj)
        where = None if customer is None else (object_type, customer)
        if self.filed_under.get(key) == where and (
            where is None or self.by_customer[where].get(key) is obj
        ):
            return
        self._unfile(key)
        if where is not None:
            self.by_customer.setdefault(where, {})[key] = obj
            self.filed_under[key] = where

    def _unfile(self, key: str) -> None:
        where = self.filed_under.pop(key, None)
        if where is not None:
            bucket = self.by_customer[where]
            del bucket[key]
            if not bucket:
                del self.by_customer[where]


def _existing_index(store: dict) -> _Index | None:
    index: _Index | None = vars(store).get(_ATTR)
    return index


def index_of(store: dict) -> _Index:
    """``store``'s index, built from its contents if it has none yet."""
    index = _existing_index(store)
    if index is None:
        index = _Index()
        for key, obj in dict.items(store):
            index.put(key, obj)
        vars(store)[_ATTR] = index
    return index


def _drop_index(store: dict) -> None:
    vars(store).pop(_ATTR, None)


# --------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------


def objects_of(object_type: str) -> list[Any]:
    """The stored objects of ``object_type`` (e.g. ``"invoice"``), in store order."""
    bucket = index_of(ls.store).by_type.get(object_type)
    return list(bucket.values()) if bucket else []


def customer_objects(object_type: str, customer: str) -> list[Any]:
    """The stored objects of ``object_type`` whose ``customer`` is ``customer``, in store order.

    The same objects, in the same order, as ``[o for o in objects_of(object_type) if
    o.customer == customer]``.
    """
    index = index_of(ls.store)
    bucket = index.by_customer.get((object_type, customer))
    if not bucket:
        return []
    return [bucket[key] for key in sorted(bucket, key=index.position.__getitem__)]


def store_position(obj: Any) -> int | None:
    """Where ``obj`` is in store order (comparable within one index), ``None`` if not stored."""
    key = f"{getattr(obj, 'object', None)}:{getattr(obj, 'id', None)}"
    index = index_of(ls.store)
    bucket = index.by_type.get(_type_of(key) or "")
    if bucket is None or bucket.get(key) is not obj:
        return None
    return index.position[key]


def current_index() -> object:
    """The identity of the store's current index: changes when it is rebuilt.

    It is rebuilt after ``clear`` (a reset) and ``update`` (loading a state file);
    whatever a module derives from the stored objects is stale then.
    """
    return index_of(ls.store)


# --------------------------------------------------------------------------
# Lists scoped to one customer
# --------------------------------------------------------------------------

# (object type, customer id) while a list scoped to that customer runs; the first list
# of that type underneath (the one its customer filter applies to) consumes it.
_customer_scope: ContextVar[tuple[str, str] | None] = ContextVar("_customer_scope", default=None)


def _list_all(cls, url, limit=None, starting_after=None, **kwargs):
    """``StripeObject._api_list_all`` from the index (same checks, same order)."""
    if kwargs:
        raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
    result = ls.List(url, limit=limit, starting_after=starting_after)
    scope = _customer_scope.get()
    if scope is not None and scope[0] == cls.object:
        _customer_scope.set(None)
        result._list = customer_objects(cls.object, scope[1])
    else:
        result._list = objects_of(cls.object)
    return result


def scoped_to_customer(list_all: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the function of a class's ``_api_list_all`` that, given ``customer``, keeps
    only the objects whose ``customer`` equals it: its base list then starts from that
    customer's objects alone (see the module's docstring).
    """

    @functools.wraps(list_all)
    def scoped(cls, url, *args, **kwargs):
        customer = kwargs.get("customer")
        if not isinstance(customer, str) or not customer:
            return list_all(cls, url, *args, **kwargs)
        token = _customer_scope.set((cls.object, customer))
        try:
            return list_all(cls, url, *args, **kwargs)
        finally:
            _customer_scope.reset(token)

    return scoped


# --------------------------------------------------------------------------
# Keeping the index
# --------------------------------------------------------------------------

_orig_setitem = ls.Store.__setitem__
_orig_delitem = ls.Store.__delitem__


def _setitem(self, key, value):
    _orig_setitem(self, key, value)  # localstripe's: stores, then dump_to_disk
    index = _existing_index(self)
    if index is not None:
        index.put(key, value)


def _delitem(self, key):
    _orig_delitem(self, key)
    index = _existing_index(self)
    if index is not None:
        index.discard(key)


# The rest bypass __setitem__/__delitem__ in dict (and did not save in localstripe
# either): same effect on the contents, and the index follows.


def _clear(self):
    dict.clear(self)
    _drop_index(self)


def _update(self, *args, **kwargs):
    dict.update(self, *args, **kwargs)
    # Rebuilt from the contents when next needed: one pass, like loading itself.
    _drop_index(self)


def _ior(self, other):
    _update(self, other)
    return self


_MISSING = object()


def _pop(self, key, default=_MISSING):
    if key in self:
        value = dict.pop(self, key)
        index = _existing_index(self)
        if index is not None:
            index.discard(key)
        return value
    if default is _MISSING:
        raise KeyError(key)
    return default


def _popitem(self):
    key, value = dict.popitem(self)
    index = _existing_index(self)
    if index is not None:
        index.discard(key)
    return key, value


def _setdefault(self, key, default=None):
    if key in self:
        return dict.__getitem__(self, key)
    dict.__setitem__(self, key, default)
    index = _existing_index(self)
    if index is not None:
        index.put(key, default)
    return default


def _getstate(self):
    # Pickles (the state file) hold what they always did: the index is derived.
    state = {k: v for k, v in vars(self).items() if k != _ATTR}
    return state or None


def _object_setattr(self, name, value):
    object.__setattr__(self, name, value)
    if name in _watched:
        _attribute_set(self)


def _attribute_set(obj: Any) -> None:
    store = ls.store
    index = _existing_index(store)
    if index is None:
        return  # read when the index is built
    key = f"{getattr(obj, 'object', None)}:{getattr(obj, 'id', None)}"
    object_type = _type_of(key)
    # Only stored objects: not one being built before it is stored, nor a List.
    if object_type is not None and dict.get(store, key) is obj:
        index.refresh(key, object_type, obj)


def install() -> None:
    """Make localstripe's store keep the index and its lists use it (once, from
    :func:`devtools.stripe_emulator.server.install`)."""
    ls.Store.__setitem__ = _setitem
    ls.Store.__delitem__ = _delitem
    ls.Store.clear = _clear
    ls.Store.update = _update
    ls.Store.__ior__ = _ior
    ls.Store.pop = _pop
    ls.Store.popitem = _popitem
    ls.Store.setdefault = _setdefault
    ls.Store.__getstate__ = _getstate
    ls.StripeObject.__setattr__ = _object_setattr
    ls.StripeObject._api_list_all = classmethod(_list_all)
    for cls in (ls.Subscription, ls.Invoice, ls.InvoiceItem, ls.PaymentMethod, ls.Charge):
        cls._api_list_all = classmethod(scoped_to_customer(cls._api_list_all.__func__))
    # Whatever the store holds already (if anything) is indexed when first needed.
    _drop_index(ls.store)
