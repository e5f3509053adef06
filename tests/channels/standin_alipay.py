"""A local stand-in for Alipay's gateway (https://openapi.alipay.com/gateway.do), as plain ASGI.

It speaks what the channel uses: alipay.trade.precreate, alipay.trade.page.pay and
alipay.trade.wap.pay (the buyer's GET of the cashier), alipay.trade.app.pay (the order string the
Alipay SDK in an app submits: `app_pay`), alipay.trade.query and alipay.trade.refund. It checks each request's RSA2 sign with the APP
public key (its own string building, not the channel's), keeps trades in memory, answers JSON
signed with the ALIPAY private key over the exact `<method>_response` text, and produces the
signed form-encoded notifies Alipay would POST to notify_url.

Keys are generated locally (RSA 2048); nothing here talks to the network.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qsl, urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.asgi import read_body

__all__ = ["AlipayStandin", "Keys", "generate_keys", "sign_notify", "standin_sign"]

_CST = timezone(timedelta(hours=8))
_AMOUNT_RE = re.compile(r"^[0-9]+(\.[0-9]{1,2})?$")
_TIMESTAMP_SKEW_S_MAX = 15 * 60
_PRODUCT_CODES = {"alipay.trade.page.pay": "FAST_INSTANT_TRADE_PAY", "alipay.trade.wap.pay": "QUICK_WAP_PAY",
                  "alipay.trade.app.pay": "QUICK_MSECURITY_PAY"}


@dataclass(frozen=True)
class Keys:
    app_private_pkcs8: str
    app_private_pkcs1: str
    app_public_pem: str
    alipay_private_pkcs1: str
    alipay_private_pkcs8: str
    alipay_public_pem: str
    alipay_public_bare: str  # what Alipay's console shows: base64 SubjectPublicKeyInfo, no armour
    app_private: rsa.RSAPrivateKey = field(repr=False)
    alipay_private: rsa.RSAPrivateKey = field(repr=False)


def _private_pems(key: rsa.RSAPrivateKey) -> tuple[str, str]:
    none = serialization.NoEncryption()
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none).decode()
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, none
    ).decode()
    return pkcs8, pkcs1


@functools.cache
def generate_keys() -> Keys:
    """One app key pair and one "Alipay" key pair per test session (RSA generation is slow)."""
    app = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    alipay = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    app_pkcs8, app_pkcs1 = _private_pems(app)
    alipay_pkcs8, alipay_pkcs1 = _private_pems(alipay)
    alipay_der = alipay.public_key().public_bytes(serialization.Encoding.DER, spki)
    return Keys(
        app_private_pkcs8=app_pkcs8,
        app_private_pkcs1=app_pkcs1,
        app_public_pem=app.public_key().public_bytes(serialization.Encoding.PEM, spki).decode(),
        alipay_private_pkcs1=alipay_pkcs1,
        alipay_private_pkcs8=alipay_pkcs8,
        alipay_public_pem=alipay.public_key().public_bytes(serialization.Encoding.PEM, spki).decode(),
        alipay_public_bare=base64.b64encode(alipay_der).decode(),
        app_private=app,
        alipay_private=alipay,
    )


def standin_sign(key: rsa.RSAPrivateKey, text: str, *, charset: str = "utf-8") -> str:
    return base64.b64encode(key.sign(text.encode(charset), padding.PKCS1v15(), hashes.SHA256())).decode()


def sign_notify(
    key: rsa.RSAPrivateKey, params: dict[str, str], *, skip_empty: bool = True, charset: str = "utf-8"
) -> bytes:
    """The form body Alipay POSTs: params plus sign_type=RSA2 and sign over sorted k=v (no sign,
    no sign_type; empties skipped like today's Java SDK, or kept like older ones)."""
    signed = {key_: value for key_, value in params.items() if key_ not in ("sign", "sign_type")}
    content = "&".join(f"{k}={v}" for k, v in sorted(signed.items()) if not (skip_empty and v == ""))
    body = {**params, "sign_type": "RSA2", "sign": standin_sign(key, content, charset=charset)}
    return urlencode(body, encoding=charset).encode("ascii")


def _minor(text: str) -> int:
    return int(Decimal(text) * 100)


def _timeout_minutes(text: str) -> int:
    if text == "1c":
        return 24 * 60
    return int(text[:-1]) * {"m": 1, "h": 60, "d": 24 * 60}[text[-1]]


def _yuan(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


@dataclass
class Trade:
    out_trade_no: str
    total_amount: str
    subject: str
    notify_url: str
    trade_no: str
    qr_code: str
    status: str = "WAIT_BUYER_PAY"
    visible: bool = False  # Alipay shows a precreated trade to query only once the buyer scans
    refunds: dict[str, str] = field(default_factory=dict)  # out_request_no -> refund_amount
    timeout_express: str = ""  # as received (precreate)
    time_expire: str = ""  # as received (page.pay)


class AlipayStandin:
    """An ASGI app. Knobs: `corrupt_sign` (a bad response sign),
    `pretty` (indent the JSON: the channel must verify the raw text), `force` (a business error
    {"code", "sub_code", ...} for the next call)."""

    def __init__(self, *, app_id: str, keys: Keys, now_s: Callable[[], int] | None = None) -> None:
        self.app_id = app_id
        self.keys = keys
        self.now_s = now_s
        self.trades: dict[str, Trade] = {}
        self.requests: list[dict[str, str]] = []
        self.corrupt_sign = False
        self.pretty = False
        self.force: dict[str, str] | None = None
        self._serial = 0

    # --- ASGI ---

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI signature
        body = await read_body(scope, receive)
        if scope["path"] != "/gateway.do":
            return await _respond(send, 404, b"not found", "text/plain")
        raw = scope.get("query_string", b"") if scope["method"] == "GET" else body
        params = dict(parse_qsl(raw.decode("ascii"), keep_blank_values=True, encoding="utf-8"))
        self.requests.append(params)
        if scope["method"] == "GET":
            return await self._cashier(send, params)
        status, text = self._dispatch(params)
        await _respond(send, status, text.encode("utf-8"), "application/json;charset=utf-8")

    def _dispatch(self, params: dict[str, str]) -> tuple[int, str]:
        method = params.get("method", "")
        handlers = {
            "alipay.trade.precreate": self._precreate,
            "alipay.trade.query": self._query,
            "alipay.trade.refund": self._refund,
            "alipay.trade.close": self._close,
            "alipay.trade.fastpay.refund.query": self._refund_query,
        }
        if method not in handlers:
            error = {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-method"}
            return 200, json.dumps({"error_response": error, "sign": ""})
        problem = self.check_request(params)
        if problem is not None:
            return 200, self._signed(method, {"code": "40002", "msg": "Invalid Arguments", **problem})
        if self.force is not None:
            forced, self.force = self.force, None
            return 200, self._signed(method, forced)
        return 200, self._signed(method, handlers[method](json.loads(params["biz_content"])))

    def check_request(self, params: dict[str, str]) -> dict[str, str] | None:
        """What Alipay's gateway checks before the business logic; None when all is well."""
        if params.get("app_id") != self.app_id:
            return {"sub_code": "isv.invalid-app-id", "sub_msg": "无效的AppID参数"}
        fixed = {"format": "JSON", "charset": "utf-8", "sign_type": "RSA2", "version": "1.0"}
        if any(params.get(key) != value for key, value in fixed.items()):
            return {"sub_code": "isv.invalid-parameter", "sub_msg": "公共参数错误"}
        try:
            stamp = datetime.strptime(params.get("timestamp", ""), "%Y-%m-%d %H:%M:%S").replace(tzinfo=_CST)
        except ValueError:
            return {"sub_code": "isv.invalid-timestamp", "sub_msg": "非法的时间戳参数"}
        if self.now_s is not None and abs(stamp.timestamp() - self.now_s()) > _TIMESTAMP_SKEW_S_MAX:
            return {"sub_code": "isv.invalid-timestamp", "sub_msg": "非法的时间戳参数"}
        content = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v != "")
        try:
            self.keys.app_private.public_key().verify(
                base64.b64decode(params.get("sign", ""), validate=True),
                content.encode("utf-8"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            return {"sub_code": "isv.invalid-signature", "sub_msg": "验签出错"}
        return None

    def _signed(self, method: str, response: dict[str, str]) -> str:
        indent = 2 if self.pretty else None
        separators = None if self.pretty else (",", ":")
        inner = json.dumps(response, ensure_ascii=False, indent=indent, separators=separators)
        sign = standin_sign(self.keys.alipay_private, inner)
        if self.corrupt_sign:
            sign = standin_sign(self.keys.alipay_private, inner + " ")
        name = method.replace(".", "_") + "_response"
        return f'{{"{name}":{inner},"sign":"{sign}"}}'

    async def _cashier(self, send, params: dict[str, str]) -> None:  # noqa: ANN001
        """The buyer's browser lands here with alipay.trade.page.pay's or wap.pay's signed query."""
        problem = self._client_request(params, ("alipay.trade.page.pay", "alipay.trade.wap.pay"))
        if problem is not None:
            return await _respond(
                send, 400, json.dumps(problem, ensure_ascii=False).encode(), "application/json"
            )
        await _respond(send, 200, "<html>支付宝收银台</html>".encode(), "text/html;charset=utf-8")

    def app_pay(self, order_string: str) -> Trade:
        """What the Alipay SDK in an app does with the order string: submits it to the gateway,
        which checks it like any request and shows the payer the trade."""
        params = dict(parse_qsl(order_string, keep_blank_values=True, strict_parsing=True, encoding="utf-8"))
        assert order_string == urlencode(params), "an order string is form-encoded once"
        self.requests.append(params)
        problem = self._client_request(params, ("alipay.trade.app.pay",))
        assert problem is None, problem
        return self.trades[json.loads(params["biz_content"])["out_trade_no"]]

    def _client_request(self, params: dict[str, str], methods: tuple[str, ...]) -> dict[str, str] | None:
        """A signed request the payer's side carries (cashier URL, app order string): checked,
        then its trade is made. None when all is well, else the refusal."""
        if params.get("method") not in methods:
            return {"sub_code": "isv.invalid-method"}
        problem = self.check_request(params)
        if problem is not None:
            return problem
        biz = json.loads(params["biz_content"])
        if biz.get("product_code") != _PRODUCT_CODES[params["method"]]:
            return {"sub_code": "ACQ.PRODUCT_CODE_ERROR"}
        made = self._create(biz, params.get("notify_url", ""))
        return made if isinstance(made, dict) else None

    # --- business ---

    def _create(self, biz: dict[str, str], notify_url: str) -> Trade | dict[str, str]:
        amount = str(biz.get("total_amount", ""))
        if not _AMOUNT_RE.match(amount) or _minor(amount) <= 0 or not biz.get("subject"):
            return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.INVALID_PARAMETER"}
        timeout = str(biz.get("timeout_express", ""))
        if timeout and not (re.fullmatch(r"[1-9][0-9]*[mhd]|1c", timeout) and _timeout_minutes(timeout) <= 15 * 24 * 60):
            return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.INVALID_PARAMETER"}
        expire = str(biz.get("time_expire", ""))
        if expire and not re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", expire):
            return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.INVALID_PARAMETER"}
        existing = self.trades.get(biz["out_trade_no"])
        if existing is not None:
            if existing.total_amount != amount:
                return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.CONTEXT_INCONSISTENT"}
            return existing
        self._serial += 1
        trade = Trade(
            out_trade_no=biz["out_trade_no"],
            total_amount=amount,
            subject=biz["subject"],
            notify_url=notify_url,
            trade_no=f"2026112522001{self._serial:015d}",
            qr_code=f"https://qr.alipay.com/bax0{self._serial:05d}standin",
            timeout_express=timeout,
            time_expire=expire,
        )
        self.trades[trade.out_trade_no] = trade
        return trade

    def _precreate(self, biz: dict[str, str]) -> dict[str, str]:
        if biz.get("product_code", "FACE_TO_FACE_PAYMENT") != "FACE_TO_FACE_PAYMENT":
            return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.PRODUCT_CODE_ERROR"}
        notify_url = self.requests[-1].get("notify_url", "")
        trade = self._create(biz, notify_url)
        if isinstance(trade, dict):
            return trade
        return {
            "code": "10000",
            "msg": "Success",
            "out_trade_no": trade.out_trade_no,
            "qr_code": trade.qr_code,
        }

    def _query(self, biz: dict[str, str]) -> dict[str, str]:
        trade = self.trades.get(biz.get("out_trade_no", ""))
        if trade is None or not trade.visible:
            return {
                "code": "40004",
                "msg": "Business Failed",
                "sub_code": "ACQ.TRADE_NOT_EXIST",
                "sub_msg": "交易不存在",
            }
        return {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": "159****5620",
            "trade_status": trade.status,
            "total_amount": trade.total_amount,
        }

    def _refund(self, biz: dict[str, str]) -> dict[str, str]:
        trade = self.trades.get(biz.get("out_trade_no", ""))
        if trade is None or not trade.visible:
            return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST"}
        request_no = biz.get("out_request_no") or trade.out_trade_no
        refunded = sum(_minor(amount) for amount in trade.refunds.values())
        answer = {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
        }
        if request_no in trade.refunds:  # a retry: Alipay answers success without moving money
            return {**answer, "fund_change": "N", "refund_fee": _yuan(refunded)}
        if trade.status != "TRADE_SUCCESS":
            return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_STATUS_ERROR"}
        amount = str(biz.get("refund_amount", ""))
        if not _AMOUNT_RE.match(amount) or refunded + _minor(amount) > _minor(trade.total_amount):
            return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"}
        trade.refunds[request_no] = amount
        refunded += _minor(amount)
        if refunded == _minor(trade.total_amount):
            trade.status = "TRADE_CLOSED"
        return {**answer, "fund_change": "Y", "refund_fee": _yuan(refunded)}

    def _close(self, biz: dict[str, str]) -> dict[str, str]:
        trade = self.trades.get(biz.get("out_trade_no", ""))
        if trade is None or not trade.visible:  # never scanned: Alipay has no trade to close
            return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"}
        if trade.status != "WAIT_BUYER_PAY":
            return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_STATUS_ERROR", "sub_msg": "交易状态不合法"}
        trade.status = "TRADE_CLOSED"
        return {"code": "10000", "msg": "Success", "trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no}

    def _refund_query(self, biz: dict[str, str]) -> dict[str, str]:
        trade = self.trades.get(biz.get("out_trade_no", ""))
        if trade is None or not trade.visible:
            return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST"}
        request_no = biz.get("out_request_no", "")
        if request_no not in trade.refunds:  # Alipay: no data means no refund was made
            return {"code": "10000", "msg": "Success"}
        return {"code": "10000", "msg": "Success", "trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no,
                "out_request_no": request_no, "refund_amount": trade.refunds[request_no],
                "total_amount": trade.total_amount, "refund_status": "REFUND_SUCCESS"}

    def closes(self) -> list[str]:
        """The out_trade_nos the channel asked to close."""
        return [json.loads(p["biz_content"])["out_trade_no"] for p in self.requests if p.get("method") == "alipay.trade.close"]

    # --- the buyer and the notifies ---

    def pay(self, out_trade_no: str) -> Trade:
        trade = self.trades[out_trade_no]
        trade.visible = True
        trade.status = "TRADE_SUCCESS"
        return trade

    def scan(self, out_trade_no: str) -> Trade:
        trade = self.trades[out_trade_no]
        trade.visible = True
        return trade

    def close(self, out_trade_no: str) -> Trade:
        trade = self.trades[out_trade_no]
        trade.visible = True
        trade.status = "TRADE_CLOSED"
        return trade

    def notify_params(self, out_trade_no: str, *, notify_id: str, now_s: int) -> dict[str, str]:
        """The notify Alipay would send for the trade's current state (refunds included)."""
        trade = self.trades[out_trade_no]
        at = datetime.fromtimestamp(now_s, tz=_CST).strftime("%Y-%m-%d %H:%M:%S")
        params = {
            "notify_time": at,
            "notify_type": "trade_status_sync",
            "notify_id": notify_id,
            "app_id": self.app_id,
            "charset": "utf-8",
            "version": "1.0",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_id": "2088102122524333",
            "seller_id": "2088101106499364",
            "trade_status": trade.status,
            "total_amount": trade.total_amount,
            "receipt_amount": trade.total_amount,
            "subject": trade.subject,
            "gmt_create": at,
            "gmt_payment": at,
        }
        if trade.refunds:
            refunded = sum(_minor(amount) for amount in trade.refunds.values())
            params.update(refund_fee=_yuan(refunded), gmt_refund=at, out_biz_no=list(trade.refunds)[-1])
        return params

    def notify(self, out_trade_no: str, *, notify_id: str, now_s: int, skip_empty: bool = True) -> bytes:
        params = self.notify_params(out_trade_no, notify_id=notify_id, now_s=now_s)
        return sign_notify(self.keys.alipay_private, params, skip_empty=skip_empty)


async def _respond(send, status: int, body: bytes, media_type: str) -> None:  # noqa: ANN001
    headers = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
