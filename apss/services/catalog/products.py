"""The catalog: products, prices, grants, and stock set or adjusted atomically."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, UnsetType

from apss.clock import Clock
from apss.domain.catalog import (
    SKU_PATTERN,
    CurrencyGrant,
    Grant,
    ProductCategory,
    default_grants,
)
from apss.domain.money import (
    CurrencyCodeReserved,
    is_iso_currency,
    is_virtual_price_code,
)
from apss.domain.subscriptions import Billing
from apss.errors import (
    CurrencyNotSupported,
    InvalidRequest,
    NotFound,
    OutOfStock,
    SkuExists,
    StockOutOfRange,
)
from apss.ids import new_id
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.paging import page_of
from apss.services.views import ProductView, product_view
from apss.store import catalog as store
from apss.store.db import Database, Tx

__all__ = ["STOCK_MAX", "Catalog", "ProductCreate", "ProductUpdate"]

# ISO 4217 codes, or a virtual currency the merchant's products grant (2-16 upper-case letters).
CurrencyCode = Annotated[str, Meta(pattern=r"^[A-Z]{2,16}$")]
PriceAmount = Annotated[int, Meta(ge=1, le=10**12)]
Prices = Annotated[dict[CurrencyCode, PriceAmount], Meta(min_length=1, max_length=50)]
Grants = Annotated[list[Grant], Meta(max_length=20)]
# One bound on a product's free units, whoever sets them (the API or the dashboard) and however
# (`stock`, or the result of `stock_adjust`): it keeps every count far inside SQLite's 64-bit
# INTEGER, where an overflow would fail the write or silently turn the sum into a REAL.
# Checked by _check_stock in the service, not by msgspec, so that callers who build the command
# themselves (the dashboard) get the same rule and the same code.
STOCK_MAX = 10**12
StockUnits = Annotated[int, Meta(description=f"free units, 0 to {STOCK_MAX}")]
StockDelta = Annotated[int, Meta(description=f"units to add (negative removes); the result stays within 0 to {STOCK_MAX}")]


class ProductCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sku: Annotated[str, Meta(pattern=SKU_PATTERN)]
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    category: ProductCategory
    prices: Prices
    stock: StockUnits | None = None
    purchase_limit: Annotated[int, Meta(ge=1, le=10**9)] | None = None
    grants: Grants | None = None
    active: bool = True
    # A publishable key (a web page) may start a checkout for it: README "Embedding the checkout".
    browser_sellable: bool = False
    # A membership product with a billing plan is sold by subscription (API.md "Subscriptions").
    billing: Billing | None = None


class ProductUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)] | UnsetType = UNSET
    prices: Prices | UnsetType = UNSET
    purchase_limit: Annotated[int, Meta(ge=1, le=10**9)] | None | UnsetType = UNSET
    grants: Grants | UnsetType = UNSET
    active: bool | UnsetType = UNSET
    browser_sellable: bool | UnsetType = UNSET
    stock: StockUnits | None | UnsetType = UNSET
    stock_adjust: StockDelta | UnsetType = UNSET


_encode = msgspec.json.encode


def _check_stock(stock: int, *, param: str) -> None:
    assert isinstance(stock, int) and not isinstance(stock, bool), "stock is decoded or parsed as an int"
    if not 0 <= stock <= STOCK_MAX:
        raise StockOutOfRange(f"Stock must be between 0 and {STOCK_MAX} units.", param=param)


def _check_stock_adjust(delta: int) -> None:
    """Before any read: a delta larger than the whole range can never be applied."""
    assert isinstance(delta, int) and not isinstance(delta, bool), "stock_adjust is decoded or parsed as an int"
    if not -STOCK_MAX <= delta <= STOCK_MAX:
        raise StockOutOfRange(f"stock_adjust must be between {-STOCK_MAX} and {STOCK_MAX} units.", param="stock_adjust")


def _adjusted_stock(current: int | None, delta: int) -> int:
    """The free units after `delta`: never below zero (409, API.md), never past STOCK_MAX (400)."""
    if current is None:
        raise InvalidRequest("This product has unlimited stock; set a number with {\"stock\": n} first.",
                             code="stock_unlimited", param="stock_adjust")
    # Not `<= STOCK_MAX`: released reservations return to stock after a set, and rows written
    # before this bound existed may be above it; a removal from them is still allowed.
    assert current >= 0, "the store never lets stock go below zero"
    result = current + delta
    if result < 0:
        raise OutOfStock(f"Only {current} free units to remove.", param="stock_adjust")
    _check_stock(result, param="stock_adjust")
    return result


def _check_grants(grants: list[Grant] | None) -> None:
    for index, grant in enumerate(grants or []):
        if isinstance(grant, CurrencyGrant) and is_iso_currency(grant.currency):
            raise CurrencyCodeReserved(f"'{grant.currency}' is an ISO 4217 code; a virtual currency needs its own name.",
                                       param=f"grants[{index}].currency")


def _check_currencies(tx: Tx, *, merchant_id: str, prices: dict[str, int], grants: list[Grant]) -> None:
    """Every price is in an ISO 4217 currency, or in a virtual currency that this product or
    another of the merchant's products grants (paid from the player's wallet)."""
    own = {g.currency for g in grants if isinstance(g, CurrencyGrant)}
    for code in prices:
        if is_iso_currency(code):
            continue
        if is_virtual_price_code(code) and (code in own or store.virtual_currency_granted(tx, merchant_id=merchant_id, code=code)):
            continue
        raise CurrencyNotSupported(f"'{code}' is neither an ISO 4217 currency nor a virtual currency your products grant",
                                   param=f"prices.{code}")


def _grants_of(row) -> list[Grant]:
    return msgspec.json.decode(row["grants"], type=list[Grant])


class Catalog:
    def __init__(self, *, db: Database, clock: Clock, idempotency: Idempotency) -> None:
        self._db = db
        self._clock = clock
        self._idempotency = idempotency

    async def create(self, *, merchant_id: str, command: ProductCreate, idem: IdempotencyRequest | None) -> Outcome:
        if command.stock is not None:
            _check_stock(command.stock, param="stock")

        _check_grants(command.grants)
        if command.billing is not None and command.category is not ProductCategory.MEMBERSHIP:
            raise InvalidRequest("Only a membership product can carry a billing plan.",
                                 code="billing_requires_membership", param="billing")

        def transaction(tx: Tx) -> ProductView:
            grants = default_grants(command.category, command.sku, command.grants)
            _check_currencies(tx, merchant_id=merchant_id, prices=command.prices, grants=grants)
            if store.sku_taken(tx, merchant_id=merchant_id, sku=command.sku):
                raise SkuExists(f"A product with sku '{command.sku}' already exists.", param="sku")
            product_id = new_id("prd")
            store.insert_product(tx, {
                "id": product_id, "merchant_id": merchant_id, "sku": command.sku, "name": command.name,
                "category": command.category.value, "prices": _encode(command.prices).decode(),
                "stock": command.stock, "purchase_limit": command.purchase_limit,
                "grants": _encode(grants).decode(), "active": int(command.active),
                "browser_sellable": int(command.browser_sellable),
                "created_at_ms": self._clock.now_ms(),
                "billing": _encode(command.billing).decode() if command.billing is not None else None,
            })
            return product_view(store.get_product_tx(tx, merchant_id=merchant_id, product_id=product_id))

        return await self._idempotency.run(self._db, merchant_id=merchant_id, request=idem, fn=transaction, success_status=201)

    async def update(self, *, merchant_id: str, product_id: str, command: ProductUpdate, idem: IdempotencyRequest | None) -> Outcome:
        if command.stock is not UNSET and command.stock_adjust is not UNSET:
            raise InvalidRequest("Give either stock or stock_adjust, not both.", code="stock_and_stock_adjust", param="stock_adjust")
        if command.grants is not UNSET:
            _check_grants(command.grants)
        if command.stock is not UNSET and command.stock is not None:
            _check_stock(command.stock, param="stock")
        if command.stock_adjust is not UNSET:
            _check_stock_adjust(command.stock_adjust)

        def transaction(tx: Tx) -> ProductView:
            row = store.get_product_tx(tx, merchant_id=merchant_id, product_id=product_id)
            if row is None:
                raise NotFound(f"No such product: '{product_id}'", param="id")
            now_ms = self._clock.now_ms()
            # Checked before the first write: a refusal leaves the other fields of the PATCH alone.
            adjusted = None if command.stock_adjust is UNSET else _adjusted_stock(row["stock"], command.stock_adjust)
            if command.grants is not UNSET:
                default_grants(ProductCategory(row["category"]), row["sku"], command.grants)
            if command.prices is not UNSET:
                grants = command.grants if command.grants is not UNSET else _grants_of(row)
                _check_currencies(tx, merchant_id=merchant_id, prices=command.prices, grants=grants or [])
            fields = {name: getattr(command, name) for name in ("name", "purchase_limit", "active", "browser_sellable")
                      if getattr(command, name) is not UNSET}
            for flag in ("active", "browser_sellable"):
                if flag in fields:
                    fields[flag] = int(fields[flag])
            if command.prices is not UNSET:
                fields["prices"] = _encode(command.prices).decode()
            if command.grants is not UNSET:
                grants = default_grants(ProductCategory(row["category"]), row["sku"], command.grants)
                fields["grants"] = _encode(grants).decode()
            store.update_product(tx, product_id=product_id, fields=fields, now_ms=now_ms)
            if command.stock is not UNSET:
                store.set_stock(tx, product_id=product_id, stock=command.stock, now_ms=now_ms)
            if command.stock_adjust is not UNSET:
                adjusted_ok = store.adjust_stock(tx, product_id=product_id, delta=command.stock_adjust, now_ms=now_ms)
                if not adjusted_ok:  # validated above under the writer: a broken store
                    raise RuntimeError(f"product {product_id}: the stock adjustment validated above did not apply")
            view = product_view(store.get_product_tx(tx, merchant_id=merchant_id, product_id=product_id))
            assert adjusted is None or view.stock == adjusted, "the writer is alone: the stock read is the stock adjusted"
            return view

        return await self._idempotency.run(self._db, merchant_id=merchant_id, request=idem, fn=transaction, success_status=200)

    async def get(self, *, merchant_id: str, product_id: str) -> ProductView:
        row = await store.get_product(self._db, merchant_id=merchant_id, product_id=product_id)
        if row is None:
            raise NotFound(f"No such product: '{product_id}'", param="id")
        return product_view(row)

    async def list(self, *, merchant_id: str, after_id: str | None, limit: int, active: bool | None) -> tuple[list[ProductView], bool]:
        rows = await store.list_products(self._db, merchant_id=merchant_id, after_id=after_id, limit=limit + 1, active=active)
        return page_of(rows, limit, product_view)
