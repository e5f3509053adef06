"""The catalog over HTTP: product creation and its default grants, the product object, listing
with pagination, PATCH (fields, stock, atomic stock_adjust, idempotent replay), concurrent
stock adjustments, and per-player purchase limits."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from apss.clock import format_rfc3339
from tests.conftest import assert_error, unique_sku

pytestmark = pytest.mark.both_backends

PRODUCT_FIELDS = {"id", "sku", "name", "category", "prices", "stock", "reserved", "sold", "purchase_limit", "grants",
                  "active", "browser_sellable", "created_at"}


def create(client: httpx.Client, **fields) -> httpx.Response:
    body = {"sku": unique_sku(), "name": "Thing", "category": "item", "prices": {"USD": 500}, **fields}
    return client.post("/v1/products", json=body)


# -- creation --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("category", "default_grant"), [
    ("item", lambda sku: {"type": "item", "sku": sku, "quantity": 1}),
    ("membership", lambda sku: {"type": "membership", "sku": sku, "duration_days": 30}),
    ("digital_content", lambda sku: {"type": "entitlement", "sku": sku}),
])
def test_default_grants_by_category_and_exact_product_object(merchant, category, default_grant):
    sku = unique_sku(category)
    with merchant.client() as client:
        response = client.post("/v1/products", json={"sku": sku, "name": "A Thing", "category": category,
                                                      "prices": {"USD": 499, "JPY": 500}})
        assert response.status_code == 201, response.text
        product = response.json()
        assert set(product) == PRODUCT_FIELDS
        assert product["id"].startswith("prd_") and len(product["id"]) == 4 + 26
        assert product == {
            "id": product["id"], "sku": sku, "name": "A Thing", "category": category,
            "prices": {"USD": 499, "JPY": 500}, "stock": None, "reserved": 0, "sold": 0, "purchase_limit": None,
            "grants": [default_grant(sku)], "active": True, "browser_sellable": False,
            "created_at": format_rfc3339(merchant.server.clock.now_ms()),
        }
        fetched = client.get(f"/v1/products/{product['id']}")
        assert fetched.status_code == 200 and fetched.json() == product


def test_currency_pack_needs_its_grant(merchant):
    with merchant.client() as client:
        assert_error(create(client, category="currency_pack"), 400, "invalid_request_error",
                     "currency_pack_grant_required", "grants")
        assert_error(create(client, category="currency_pack", grants=[]), 400, "invalid_request_error",
                     "currency_pack_grant_required", "grants")
        grant = {"type": "currency", "currency": "GEMS", "amount": 500}
        response = create(client, category="currency_pack", grants=[grant], stock=7, purchase_limit=3, active=False)
        assert response.status_code == 201, response.text
        product = response.json()
        assert (product["grants"], product["stock"], product["purchase_limit"], product["active"]) == ([grant], 7, 3, False)
        # Nothing was created by the refused requests.
        listed = client.get("/v1/products").json()
        assert [p["id"] for p in listed["data"]] == [product["id"]]


def test_explicit_grants_replace_the_default(merchant):
    grants = [{"type": "item", "sku": "potion", "quantity": 3}, {"type": "currency", "currency": "GEMS", "amount": 10}]
    with merchant.client() as client:
        response = create(client, category="item", grants=grants)
        assert response.status_code == 201, response.text
        assert response.json()["grants"] == grants


def test_sku_exists_is_409_and_skus_are_per_merchant(merchant, server):
    sku = unique_sku("dup")
    with merchant.client() as client:
        first = create(client, sku=sku)
        assert first.status_code == 201, first.text
        assert_error(create(client, sku=sku, name="Other"), 409, "conflict_error", "sku_exists", "sku")
        listed = client.get("/v1/products").json()["data"]
        assert [p["id"] for p in listed] == [first.json()["id"]]
    other = server.new_merchant()
    with other.client() as client:
        assert create(client, sku=sku).status_code == 201


def test_unknown_currency_in_prices_is_refused(merchant):
    with merchant.client() as client:
        assert_error(create(client, prices={"USD": 100, "XYZ": 100}), 400, "invalid_request_error",
                     "currency_not_supported", "prices.XYZ")
        assert client.get("/v1/products").json()["data"] == []


def test_other_merchants_product_is_not_found(merchant, server):
    with merchant.client() as client:
        product = merchant.product(client)
    other = server.new_merchant()
    with other.client() as client:
        assert_error(client.get(f"/v1/products/{product['id']}"), 404, "invalid_request_error", "not_found")
        assert_error(client.patch(f"/v1/products/{product['id']}", json={"name": "mine"}), 404,
                     "invalid_request_error", "not_found")
        assert_error(client.get("/v1/products/prd_doesnotexist"), 404, "invalid_request_error", "not_found")


# -- listing ---------------------------------------------------------------------------------------

def test_list_pagination_newest_first(merchant):
    with merchant.client() as client:
        created = [merchant.product(client, sku=unique_sku("page"))["id"] for _ in range(5)]
        newest_first = list(reversed(created))
        page1 = client.get("/v1/products", params={"limit": 2})
        assert page1.status_code == 200, page1.text
        body1 = page1.json()
        assert set(body1) == {"data", "has_more", "next_cursor"}
        assert [p["id"] for p in body1["data"]] == newest_first[:2]
        assert body1["has_more"] is True and body1["next_cursor"] == newest_first[1]
        body2 = client.get("/v1/products", params={"limit": 2, "cursor": body1["next_cursor"]}).json()
        assert [p["id"] for p in body2["data"]] == newest_first[2:4]
        assert body2["has_more"] is True and body2["next_cursor"] == newest_first[3]
        body3 = client.get("/v1/products", params={"limit": 2, "cursor": body2["next_cursor"]}).json()
        assert [p["id"] for p in body3["data"]] == newest_first[4:]
        assert body3["has_more"] is False and body3["next_cursor"] is None
        # Exactly a full page: no more.
        exact = client.get("/v1/products", params={"limit": 5}).json()
        assert [p["id"] for p in exact["data"]] == newest_first
        assert exact["has_more"] is False and exact["next_cursor"] is None
        default = client.get("/v1/products").json()
        assert [p["id"] for p in default["data"]] == newest_first and default["has_more"] is False
        full = client.get("/v1/products", params={"limit": 100}).json()
        assert full["data"] == default["data"]
        for bad in (0, 101, -1):
            assert_error(client.get("/v1/products", params={"limit": bad}), 400, "invalid_request_error",
                         "parameter_invalid", "limit")


def test_list_default_limit_is_20(merchant):
    with merchant.client() as client:
        created = [merchant.product(client, sku=unique_sku("many"))["id"] for _ in range(21)]
        body = client.get("/v1/products").json()
        assert [p["id"] for p in body["data"]] == list(reversed(created))[:20]
        assert body["has_more"] is True and body["next_cursor"] == created[1]
        rest = client.get("/v1/products", params={"cursor": body["next_cursor"]}).json()
        assert [p["id"] for p in rest["data"]] == [created[0]] and rest["has_more"] is False


def test_list_filters_by_active(merchant):
    with merchant.client() as client:
        on = merchant.product(client, sku=unique_sku("on"))
        off = merchant.product(client, sku=unique_sku("off"), active=False)
        assert [p["id"] for p in client.get("/v1/products", params={"active": "true"}).json()["data"]] == [on["id"]]
        assert [p["id"] for p in client.get("/v1/products", params={"active": "false"}).json()["data"]] == [off["id"]]


# -- PATCH -----------------------------------------------------------------------------------------

def test_patch_fields(merchant):
    with merchant.client() as client:
        product = merchant.product(client, sku=unique_sku("patch"))
        url = f"/v1/products/{product['id']}"
        grants = [{"type": "item", "sku": "shield", "quantity": 2}]
        response = client.patch(url, json={"name": "Renamed", "prices": {"EUR": 450, "KWD": 1234},
                                           "purchase_limit": 4, "active": False, "grants": grants})
        assert response.status_code == 200, response.text
        expected = {**product, "name": "Renamed", "prices": {"EUR": 450, "KWD": 1234}, "purchase_limit": 4,
                    "active": False, "grants": grants}
        assert response.json() == expected
        assert client.get(url).json() == expected
        # purchase_limit back to none; an empty PATCH changes nothing.
        response = client.patch(url, json={"purchase_limit": None})
        assert response.status_code == 200 and response.json() == {**expected, "purchase_limit": None}
        assert client.patch(url, json={}).json() == {**expected, "purchase_limit": None}
        assert_error(client.patch(url, json={"prices": {"ABC": 1}}), 400, "invalid_request_error",
                     "currency_not_supported", "prices.ABC")
        assert_error(client.patch(url, json={"sku": "new"}), 400, "invalid_request_error", "parameter_invalid", "sku")
        assert client.get(url).json() == {**expected, "purchase_limit": None}


def test_patch_stock_set_unlimited_and_adjust(merchant):
    with merchant.client() as client:
        product = merchant.product(client, sku=unique_sku("stock"))
        url = f"/v1/products/{product['id']}"
        assert product["stock"] is None
        assert_error(client.patch(url, json={"stock_adjust": 5}), 400, "invalid_request_error", "stock_unlimited",
                     "stock_adjust")
        response = client.patch(url, json={"stock": 10})
        assert response.status_code == 200 and response.json() == {**product, "stock": 10}
        response = client.patch(url, json={"stock_adjust": 5})
        assert response.status_code == 200 and response.json()["stock"] == 15
        response = client.patch(url, json={"stock_adjust": -15})
        assert response.status_code == 200 and response.json()["stock"] == 0
        assert_error(client.patch(url, json={"stock_adjust": -1}), 409, "conflict_error", "out_of_stock", "stock_adjust")
        assert client.get(url).json()["stock"] == 0
        response = client.patch(url, json={"stock_adjust": 3})
        assert response.json()["stock"] == 3
        # Refused below zero: nothing changes, not even the other fields of the same PATCH.
        assert_error(client.patch(url, json={"stock_adjust": -4, "name": "Changed"}), 409, "conflict_error",
                     "out_of_stock", "stock_adjust")
        assert client.get(url).json() == {**product, "stock": 3}
        # Both at once: 400, nothing changes.
        assert_error(client.patch(url, json={"stock": 1, "stock_adjust": 1}), 400, "invalid_request_error",
                     "stock_and_stock_adjust")
        assert client.get(url).json()["stock"] == 3
        response = client.patch(url, json={"stock": None})
        assert response.status_code == 200 and response.json() == {**product, "stock": None}
        assert_error(client.patch(url, json={"stock": -1}), 400, "invalid_request_error", "stock_out_of_range", "stock")


def test_stock_and_the_result_of_stock_adjust_share_one_cap(merchant):
    cap = 10**12  # the bound that setting `stock` has always had
    with merchant.client() as client:
        full = merchant.product(client, sku=unique_sku("cap"), stock=cap)
        url = f"/v1/products/{full['id']}"
        assert_error(client.patch(url, json={"stock_adjust": 1}), 400, "invalid_request_error", "stock_out_of_range",
                     "stock_adjust")
        assert client.get(url).json()["stock"] == cap, "a refused adjustment changes nothing"
        some = merchant.product(client, sku=unique_sku("cap"), stock=10)
        url = f"/v1/products/{some['id']}"
        assert_error(client.patch(url, json={"stock_adjust": cap}), 400, "invalid_request_error", "stock_out_of_range",
                     "stock_adjust")
        assert_error(client.patch(url, json={"stock_adjust": 10**30}), 400, "invalid_request_error",
                     "stock_out_of_range", "stock_adjust")
        assert_error(client.patch(url, json={"stock_adjust": -(10**30)}), 400, "invalid_request_error",
                     "stock_out_of_range", "stock_adjust")
        assert_error(client.patch(url, json={"stock": cap + 1}), 400, "invalid_request_error", "stock_out_of_range",
                     "stock")
        assert client.get(url).json()["stock"] == 10
        response = client.patch(url, json={"stock_adjust": cap - 10})
        assert response.status_code == 200 and response.json()["stock"] == cap, "up to the cap exactly"
        assert_error(create(client, stock=cap + 1), 400, "invalid_request_error", "stock_out_of_range", "stock")


def test_patch_with_idempotency_key_replays(merchant):
    with merchant.client() as client:
        product = merchant.product(client, sku=unique_sku("idem"), stock=10)
        url = f"/v1/products/{product['id']}"
        first = client.patch(url, json={"stock_adjust": 5}, headers={"Idempotency-Key": "adjust-1"})
        assert first.status_code == 200 and first.json()["stock"] == 15
        assert "Idempotent-Replayed" not in first.headers
        again = client.patch(url, json={"stock_adjust": 5}, headers={"Idempotency-Key": "adjust-1"})
        assert again.status_code == 200
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.content == first.content
        assert client.get(url).json()["stock"] == 15
        assert_error(client.patch(url, json={"stock_adjust": 6}, headers={"Idempotency-Key": "adjust-1"}), 422,
                     "idempotency_error", "idempotency_key_reused")
        assert client.get(url).json()["stock"] == 15
        # A business refusal is stored and replayed too, even after it would succeed.
        refused = client.patch(url, json={"stock_adjust": -100}, headers={"Idempotency-Key": "adjust-2"})
        assert_error(refused, 409, "conflict_error", "out_of_stock", "stock_adjust")
        assert client.patch(url, json={"stock": 500}).status_code == 200
        replay = client.patch(url, json={"stock_adjust": -100}, headers={"Idempotency-Key": "adjust-2"})
        assert replay.status_code == 409 and replay.headers["Idempotent-Replayed"] == "true"
        assert replay.content == refused.content
        assert client.get(url).json()["stock"] == 500


@pytest.mark.anyio
async def test_concurrent_stock_adjust_never_goes_below_zero(merchant):
    with merchant.client() as client:
        product = merchant.product(client, sku=unique_sku("race"), stock=25)
    url = f"/v1/products/{product['id']}"
    async with merchant.async_client() as client:
        responses = await asyncio.gather(*(client.patch(url, json={"stock_adjust": -1}) for _ in range(40)))
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        assert len(ok) == 25 and len(refused) == 15
        for response in refused:
            assert_error(response, 409, "conflict_error", "out_of_stock", "stock_adjust")
        assert sorted(r.json()["stock"] for r in ok) == list(range(25))
        final = (await client.get(url)).json()
        assert (final["stock"], final["reserved"], final["sold"]) == (0, 0, 0)


# -- purchase limit --------------------------------------------------------------------------------

def test_purchase_limit_counts_pending_orders_per_player(merchant):
    with merchant.client() as client:
        limited = merchant.product(client, sku=unique_sku("limited"), stock=10, purchase_limit=2)
        other = merchant.product(client, sku=unique_sku("free"), stock=10)
        first = merchant.order(client, limited["id"], player_id="alice")
        assert first.status_code == 201, first.text
        second = merchant.order(client, limited["id"], player_id="alice")
        assert second.status_code == 201, second.text
        assert (first.json()["status"], second.json()["status"]) == ("pending", "pending")
        assert_error(merchant.order(client, limited["id"], player_id="alice"), 409, "conflict_error",
                     "purchase_limit_exceeded", "items[0]")
        # The line at fault is named; the refused order reserved nothing, not even its other line.
        two_lines = client.post("/v1/orders", json={"player_id": "alice", "currency": "USD", "items": [
            {"product_id": other["id"], "quantity": 1}, {"product_id": limited["id"], "quantity": 1}]})
        assert_error(two_lines, 409, "conflict_error", "purchase_limit_exceeded", "items[1]")
        other_state = client.get(f"/v1/products/{other['id']}").json()
        assert (other_state["stock"], other_state["reserved"]) == (10, 0)
        state = client.get(f"/v1/products/{limited['id']}").json()
        assert (state["stock"], state["reserved"]) == (8, 2)
        # Another player is unaffected, and may take both at once.
        bob = merchant.order(client, limited["id"], player_id="bob", quantity=2)
        assert bob.status_code == 201, bob.text
        assert_error(merchant.order(client, limited["id"], player_id="carol", quantity=3), 409, "conflict_error",
                     "purchase_limit_exceeded", "items[0]")
        # Canceling a pending order frees its share of the limit (and its stock).
        canceled = client.post(f"/v1/orders/{first.json()['id']}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        state = client.get(f"/v1/products/{limited['id']}").json()
        assert (state["stock"], state["reserved"]) == (7, 3)
        again = merchant.order(client, limited["id"], player_id="alice")
        assert again.status_code == 201, again.text
        assert_error(merchant.order(client, limited["id"], player_id="alice"), 409, "conflict_error",
                     "purchase_limit_exceeded", "items[0]")
        assert_error(client.post(f"/v1/orders/{first.json()['id']}/cancel"), 409, "conflict_error", "invalid_state")


def test_purchase_limit_counts_paid_orders(merchant):
    from tests.conftest import wait_for

    with merchant.client() as client:
        limited = merchant.product(client, sku=unique_sku("paidlimit"), purchase_limit=1)
        order = merchant.order(client, limited["id"], player_id="dave").json()
        assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
        wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled")
        assert_error(merchant.order(client, limited["id"], player_id="dave"), 409, "conflict_error",
                     "purchase_limit_exceeded", "items[0]")
