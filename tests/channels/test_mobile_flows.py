"""The mobile flows of WeChat Pay (JSAPI, APP, H5) and Alipay (app, wap) through the real server.

Each provider's stand-in is served on a real port, so the server's own HTTP client calls it. An
order asks for a flow with `channel_options`; its next action is checked against the providers'
SDKs from PyPI (wechatpayv3 signs the same paySign / sign byte for byte: RSA PKCS#1 v1.5 is
deterministic; python-alipay-sdk verifies the app order string and builds the same parameter set),
then the stand-in plays the payer's side (WeChat's client checks the signed parameters, the
browser opens the cashier, the Alipay SDK submits the order string), sends the provider's signed
callback, and the order must be paid and delivered exactly once, with the ledger balanced.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import pytest
from alipay import AliPay
from cryptography.exceptions import InvalidSignature
from wechatpayv3 import WeChatPay, WeChatPayType

from tests.channels import harness_wechatpay as hw
from tests.channels import standin_wechatpay as wx_standin
from tests.channels.harness_alipay import APP_ID as ALIPAY_APP_ID
from tests.channels.standin_alipay import AlipayStandin, generate_keys
from tests.conftest import assert_error, free_port
from tests.test_channels_e2e import _Served

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
PAYER_IP = "203.0.113.7"
_FORM = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}


@pytest.fixture(scope="module")
def wechat():
    standin = wx_standin.StandIn(
        mchid=hw.MCHID, appid=hw.APPID, merchant_public_key=hw._key("merchant").public_key(),
        merchant_serial_no=hw.MERCHANT_SERIAL_NO, platform_key=hw._key("platform"),
        public_key_id=hw.PUBLIC_KEY_ID, apiv3_key=hw.APIV3_KEY)
    served = _Served(standin)
    standin.api_base = served.url
    yield standin
    served.stop()


@pytest.fixture(scope="module")
def alipay_standin():
    standin = AlipayStandin(app_id=ALIPAY_APP_ID, keys=generate_keys())
    served = _Served(standin)
    standin.url = f"{served.url}/gateway.do"
    yield standin
    served.stop()


@pytest.fixture
def shop(server, wechat, alipay_standin):
    """A test merchant with both channels configured against the stand-ins, and a CNY product;
    the stand-ins' clocks follow the server's."""
    wechat.now_s = alipay_standin.now_s = lambda: server.clock.now_ms() // 1000
    merchant = server.new_merchant()
    with merchant.client() as client:
        _configure_wechat(client, wechat.api_base)
        keys = generate_keys()
        saved = client.put("/v1/channels/alipay", json={
            "app_id": ALIPAY_APP_ID, "app_private_key": keys.app_private_pkcs8,
            "alipay_public_key": keys.alipay_public_bare, "api_base": alipay_standin.url})
        assert saved.status_code == 200, saved.text
        product = merchant.product(client, prices={"CNY": 1999}, stock=5)
    return merchant, product


def _configure_wechat(client: httpx.Client, api_base: str) -> None:
    saved = client.put("/v1/channels/wechatpay", json={
        "mchid": hw.MCHID, "appid": hw.APPID, "merchant_private_key": wx_standin.private_pem(hw._key("merchant")),
        "merchant_serial_no": hw.MERCHANT_SERIAL_NO, "apiv3_key": hw.APIV3_KEY,
        "platform_public_key": wx_standin.public_pem(hw._key("platform")),
        "platform_public_key_id": hw.PUBLIC_KEY_ID, "api_base": api_base})
    assert saved.status_code == 200, saved.text


def _wechat_sdk() -> WeChatPay:
    return WeChatPay(wechatpay_type=WeChatPayType.JSAPI, mchid=hw.MCHID,
                     private_key=wx_standin.private_pem(hw._key("merchant")), cert_serial_no=hw.MERCHANT_SERIAL_NO,
                     appid=hw.APPID, apiv3_key=hw.APIV3_KEY, public_key=wx_standin.public_pem(hw._key("platform")),
                     public_key_id=hw.PUBLIC_KEY_ID, notify_url="https://unused.example/notify")


def _alipay_sdk() -> AliPay:
    keys = generate_keys()
    return AliPay(appid=ALIPAY_APP_ID, app_notify_url=None, app_private_key_string=keys.app_private_pkcs1,
                  alipay_public_key_string=keys.app_public_pem, sign_type="RSA2")


def _sdk_verifies_request(sdk: AliPay, params: dict[str, str], signature: str) -> bool:
    """python-alipay-sdk's own check of a request's sign. Its `verify` is for notifies (it drops
    sign_type, which a request's sign covers), so its string building and `_verify` are used."""
    message = "&".join(f"{k}={v}" for k, v in sdk._ordered_data(dict(params)))
    return sdk._verify(message, signature)


def _order(merchant, client: httpx.Client, product: dict, *, channel: str, player_id: str, **fields) -> dict:
    response = merchant.order(client, product["id"], player_id=player_id, currency="CNY", channel=channel, **fields)
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "pending" and order["payment"]["status"] == "requires_action", order
    return order


def _wechat_paid(server, merchant, wechat, otn: str) -> None:
    headers, body = wechat.callback_for(otn, event_id=f"EV-{secrets.token_hex(8)}",
                                        timestamp_s=server.clock.now_ms() // 1000)
    for _ in range(2):  # WeChat repeats notifications: the second must change nothing
        answer = httpx.post(f"{server.base_url}/v1/channels/wechatpay/webhook/{merchant.id}", content=body,
                            headers=headers)
        assert answer.status_code in (200, 204), answer.text


def _alipay_paid(server, merchant, standin: AlipayStandin, otn: str) -> None:
    standin.pay(otn)
    body = standin.notify(otn, notify_id=secrets.token_hex(16), now_s=server.clock.now_ms() // 1000)
    for _ in range(2):
        answer = httpx.post(f"{server.base_url}/v1/channels/alipay/webhook/{merchant.id}", content=body, headers=_FORM)
        assert answer.status_code == 200 and answer.text == "success", answer.text


def _assert_delivered_once(server, merchant, client: httpx.Client, order: dict, player_id: str) -> None:
    got = client.get(f"/v1/orders/{order['id']}").json()
    assert got["status"] == "fulfilled", got
    events = [e["type"] for e in client.get(f"/v1/orders/{order['id']}/events").json()["data"]]
    assert events.count("order.paid") == 1, events
    inventory = client.get(f"/v1/players/{player_id}/inventory").json()
    assert [i["quantity"] for i in inventory["items"]] == [1], inventory
    with server.admin() as admin:
        check = admin.get("/v1/admin/ledger/check").json()
    assert check["ok"] is True and check["problem"] is None, check


# ---- WeChat Pay -------------------------------------------------------------------------------


def test_wechat_jsapi_hands_out_paysign_parameters_the_sdk_signs_alike(server, shop, wechat):
    merchant, product = shop
    with merchant.client() as client:
        order = _order(merchant, client, product, channel="wechatpay", player_id="jsapi-1",
                       channel_options={"flow": "jsapi", "openid": OPENID})
        assert order["channel_options"] == {"flow": "jsapi", "openid": OPENID}
        action = order["payment"]["next_action"]
        assert action["type"] == "sdk_params" and set(action) == {"type", "params"}
        params = action["params"]
        assert params["appId"] == hw.APPID and params["signType"] == "RSA"
        placed = wechat.payments[order["payment"]["id"]]
        assert params["package"] == f"prepay_id={placed['prepay_id']}" and placed["trade_type"] == "JSAPI"
        assert placed["payer"] == {"openid": OPENID}
        sdk_sign = _wechat_sdk().sign([params["appId"], params["timeStamp"], params["nonceStr"], params["package"]])
        assert params["paySign"] == sdk_sign
        assert client.get(f"/v1/orders/{order['id']}").json()["channel_options"] == order["channel_options"]
        otn = wechat.pay_with_client_params("jsapi", params)
        assert otn == order["payment"]["id"]
        _wechat_paid(server, merchant, wechat, otn)
        _assert_delivered_once(server, merchant, client, order, "jsapi-1")


def test_wechat_app_hands_out_open_sdk_parameters(server, shop, wechat):
    merchant, product = shop
    with merchant.client() as client:
        order = _order(merchant, client, product, channel="wechatpay", player_id="app-1",
                       channel_options={"flow": "app"})
        assert order["channel_options"] == {"flow": "app"}
        params = order["payment"]["next_action"]["params"]
        assert params["partnerid"] == hw.MCHID and params["package"] == "Sign=WXPay"
        assert params["prepayid"] == wechat.payments[order["payment"]["id"]]["prepay_id"]
        sdk_sign = _wechat_sdk().sign([params["appid"], params["timestamp"], params["noncestr"], params["prepayid"]])
        assert params["sign"] == sdk_sign
        # Signed over the prepay_id: a client handed another one is refused by WeChat's check.
        with pytest.raises(InvalidSignature):
            wechat.pay_with_client_params("app", {**params, "prepayid": "wx" + "0" * 32})
        _wechat_paid(server, merchant, wechat, wechat.pay_with_client_params("app", params))
        _assert_delivered_once(server, merchant, client, order, "app-1")


def test_wechat_h5_redirects_to_h5_url_with_the_payers_ip_and_return_url(server, shop, wechat):
    merchant, product = shop
    with merchant.client() as client:
        order = _order(merchant, client, product, channel="wechatpay", player_id="h5-1", ip=PAYER_IP,
                       return_url="https://game.example/paid?order=1", channel_options={"flow": "h5"})
        action = order["payment"]["next_action"]
        assert action["type"] == "redirect"
        placed = wechat.payments[order["payment"]["id"]]
        assert placed["scene_info"] == {"payer_client_ip": PAYER_IP, "h5_info": {"type": "Wap"}}
        assert action["url"].startswith(placed["answer"]["h5_url"] + "&redirect_url=")
        assert parse_qs(urlsplit(action["url"]).query)["redirect_url"] == ["https://game.example/paid?order=1"]
        # The payer's IP a payment made again after a crash sends (Checkout.resume) is read from
        # the order's sealed risk facts, which hold it only encrypted.
        assert asyncio.run(server.services.risk_engine.payer_ip(order_id=order["id"])) == PAYER_IP
        _wechat_paid(server, merchant, wechat, wechat.pay_h5(action["url"]))
        _assert_delivered_once(server, merchant, client, order, "h5-1")


def test_wechat_native_stays_the_default_and_the_checkout_page_shows_its_qr(server, shop, wechat):
    merchant, product = shop
    with merchant.client() as client:
        order = _order(merchant, client, product, channel="wechatpay", player_id="native-1")
        assert order["channel_options"] is None
        assert order["payment"]["next_action"] == {"type": "qr_code",
                                                   "data": wechat.payments[order["payment"]["id"]]["code_url"]}
        page = httpx.get(order["checkout_url"])
        assert page.status_code == 200 and "data-qr=" in page.text
        app = _order(merchant, client, product, channel="wechatpay", player_id="native-2", channel_options={"flow": "app"})
        page = httpx.get(app["checkout_url"])
        assert page.status_code == 200 and "Complete the payment in the app." in page.text


# ---- Alipay -----------------------------------------------------------------------------------


def test_alipay_app_order_string_verifies_with_python_alipay_sdk(server, shop, alipay_standin):
    merchant, product = shop
    with merchant.client() as client:
        order = _order(merchant, client, product, channel="alipay", player_id="ali-app",
                       channel_options={"flow": "app"})
        action = order["payment"]["next_action"]
        assert action["type"] == "sdk_params" and set(action["params"]) == {"order_string"}
        order_string = action["params"]["order_string"]
        ours = dict(parse_qsl(order_string, keep_blank_values=True))
        sdk = _alipay_sdk()
        signature = ours.pop("sign")
        assert _sdk_verifies_request(sdk, ours, signature)
        # Signed by the SDK with our parameters, the order string is ours byte for byte.
        assert sdk.sign_data(dict(ours)) == order_string
        biz = json.loads(ours["biz_content"])
        assert biz["product_code"] == "QUICK_MSECURITY_PAY" and biz["total_amount"] == "19.99"
        assert biz["out_trade_no"] == order["payment"]["id"] and "time_expire" in biz
        theirs = dict(parse_qsl(sdk.api_alipay_trade_app_pay(subject=biz["subject"], out_trade_no=biz["out_trade_no"],
                                                             total_amount=biz["total_amount"],
                                                             notify_url=ours["notify_url"])))
        # The same parameters but `format`, which Alipay's own server SDKs send and this one omits.
        assert set(ours) | {"sign"} == set(theirs) | {"format"}
        assert {k: ours[k] for k in ("app_id", "method", "charset", "sign_type", "version", "notify_url")} == \
            {k: theirs[k] for k in ("app_id", "method", "charset", "sign_type", "version", "notify_url")}
        assert ours["notify_url"] == f"{server.base_url}/v1/channels/alipay/webhook/{merchant.id}"
        trade = alipay_standin.app_pay(order_string)  # the Alipay SDK in the game submits it
        _alipay_paid(server, merchant, alipay_standin, trade.out_trade_no)
        _assert_delivered_once(server, merchant, client, order, "ali-app")


def test_alipay_wap_redirects_to_the_mobile_cashier(server, shop, alipay_standin):
    merchant, product = shop
    with merchant.client() as client:
        order = _order(merchant, client, product, channel="alipay", player_id="ali-wap",
                       return_url="https://game.example/back", channel_options={"flow": "wap"})
        action = order["payment"]["next_action"]
        assert action["type"] == "redirect" and action["url"].startswith(alipay_standin.url + "?")
        query = dict(parse_qsl(urlsplit(action["url"]).query))
        signature = query.pop("sign")
        assert _sdk_verifies_request(_alipay_sdk(), query, signature)
        assert not _sdk_verifies_request(_alipay_sdk(), {**query, "return_url": "https://evil.example/"}, signature)
        assert query["method"] == "alipay.trade.wap.pay" and query["return_url"] == "https://game.example/back"
        biz = json.loads(query["biz_content"])
        assert biz["product_code"] == "QUICK_WAP_PAY" and biz["quit_url"] == "https://game.example/back"
        cashier = httpx.get(action["url"])  # the payer's mobile browser
        assert cashier.status_code == 200, cashier.text
        _alipay_paid(server, merchant, alipay_standin, order["payment"]["id"])
        _assert_delivered_once(server, merchant, client, order, "ali-wap")


# ---- fallback and refusals --------------------------------------------------------------------


def test_a_fallback_keeps_the_flow_and_skips_channels_without_it(server, wechat, alipay_standin):
    merchant = server.new_merchant()
    alipay_standin.now_s = lambda: server.clock.now_ms() // 1000
    with merchant.client() as client:
        _configure_wechat(client, f"http://127.0.0.1:{free_port()}")  # nothing listens: unreachable
        keys = generate_keys()
        client.put("/v1/channels/alipay", json={"app_id": ALIPAY_APP_ID, "app_private_key": keys.app_private_pkcs8,
                                                "alipay_public_key": keys.alipay_public_bare,
                                                "api_base": alipay_standin.url})
        routing = client.put("/v1/channels/routing", json={"default": ["sandbox"],
                                                          "by_currency": {"CNY": ["wechatpay", "alipay"]}})
        assert routing.status_code == 200, routing.text
        product = merchant.product(client, prices={"CNY": 500}, stock=3)
        app = _order(merchant, client, product, channel=None, player_id="fb-app", channel_options={"flow": "app"})
        assert app["channel"] == "alipay" and app["channel_options"] == {"flow": "app"}
        assert set(app["payment"]["next_action"]["params"]) == {"order_string"}
        attempts = client.get(f"/v1/payments/{app['payment']['id']}").json()["attempts"]
        assert [(a["channel"], a["outcome"]) for a in attempts] == [("wechatpay", "failed"), ("alipay", "succeeded")]
        # Alipay has no jsapi flow: it is not asked, and the order fails with WeChat's refusal.
        jsapi = merchant.order(client, product["id"], player_id="fb-jsapi", currency="CNY",
                               channel_options={"flow": "jsapi", "openid": OPENID}).json()
        assert jsapi["status"] == "failed" and jsapi["channel"] == "wechatpay", jsapi
        attempts = client.get(f"/v1/payments/{jsapi['payment']['id']}").json()["attempts"]
        assert [a["channel"] for a in attempts] == ["wechatpay"]
        assert client.get(f"/v1/products/{product['id']}").json()["stock"] == 2, "the failed order released its unit"


@pytest.mark.parametrize(("channel", "options", "fields", "code", "param"), [
    ("sandbox", {"flow": "jsapi", "openid": OPENID}, {}, "channel_flow_not_supported", "channel_options.flow"),
    ("wechatpay", {"flow": "page"}, {}, "channel_flow_not_supported", "channel_options.flow"),
    ("alipay", {"flow": "h5"}, {"ip": PAYER_IP}, "channel_flow_not_supported", "channel_options.flow"),
    ("wechatpay", {"flow": "jsapi"}, {}, "openid_required", "channel_options.openid"),
    ("wechatpay", {"flow": "app", "openid": OPENID}, {}, "openid_not_applicable", "channel_options.openid"),
    ("wechatpay", {"flow": "h5"}, {}, "payer_ip_required", "ip"),
])
def test_channel_options_a_channel_cannot_use_are_refused_with_nothing_reserved(shop, channel, options, fields, code,
                                                                                param):
    merchant, product = shop
    with merchant.client() as client:
        response = merchant.order(client, product["id"], player_id="refused", currency="CNY", channel=channel,
                                  channel_options=options, **fields)
        error = assert_error(response, 400, "invalid_request_error", code, param)
        assert OPENID not in error["message"]
        assert client.get(f"/v1/products/{product['id']}").json()["stock"] == 5
        assert client.get("/v1/orders").json()["data"] == []


@pytest.mark.parametrize(("options", "param"), [
    ({"flow": "ussd"}, "channel_options.flow"),
    ({"flow": "jsapi", "openid": "has space"}, "channel_options.openid"),
    ({"flow": "app", "colour": "red"}, "channel_options.colour"),
    ({}, "channel_options.flow"),
])
def test_malformed_channel_options_are_400_naming_the_field(shop, options, param):
    merchant, product = shop
    with merchant.client() as client:
        response = merchant.order(client, product["id"], currency="CNY", channel="wechatpay", channel_options=options)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param, response.json()


def test_the_openid_is_erased_with_the_player(server, shop, wechat):
    merchant, product = shop
    openid = "oErase" + secrets.token_hex(11)
    with merchant.client() as client:
        order = _order(merchant, client, product, channel="wechatpay", player_id="erased-1",
                       channel_options={"flow": "jsapi", "openid": openid}, metadata={"note": "x"})
        erased = client.post("/v1/players/erased-1/erase", headers={"Idempotency-Key": secrets.token_hex(8)})
        assert erased.status_code == 200, erased.text
        assert client.get(f"/v1/orders/{order['id']}").json()["channel_options"] == {"flow": "jsapi"}
    raw = b"".join(path.read_bytes() for path in server.db_path.parent.glob(server.db_path.name + "*"))
    assert openid.encode() not in raw, "no byte of the openid is left in the database files"
