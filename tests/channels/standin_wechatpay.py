"""A local stand-in for the WeChat Pay API v3 (public-key mode), for tests only.

A plain ASGI app, served to the channel through httpx.ASGITransport. It checks each request the
way WeChat does (the `WECHATPAY2-SHA256-RSA2048` Authorization signed with the merchant key whose
serial is configured, the `Wechatpay-Serial` public key id), answers with WeChat's documented JSON
shapes signed with the "platform" key the test generated, and keeps payments and refunds in
memory so query, refund and the trade bill agree. It also builds the signed, encrypted callbacks
WeChat would send. Orders are placed in every flow (native, jsapi, app, h5); the payer's side of
jsapi and app is `pay_with_client_params` (WeChat's client checks the merchant's paySign / sign
over the prepay_id, as WeixinJSBridge and the Open SDK do), of h5 `pay_h5`. Deliberately written against `cryptography` directly, not the channel's code.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256

from tests.asgi import read_body

__all__ = [
    "AUTH_SCHEMA",
    "StandIn",
    "build_callback",
    "encrypt_resource",
    "new_rsa_key",
    "private_pem",
    "public_pem",
    "sign_message",
]

AUTH_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
_TOLERANCE_S = 300
_AUTH_FIELD_RE = re.compile(r'(\w+)="([^"]*)"')
_OUT_TRADE_NO_RE = re.compile(r"^[A-Za-z0-9_\-|*]{6,32}$")
_FEE_RATE = Decimal("0.006")  # 0.60%, the usual rate for virtual goods

BILL_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,"
    "付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,"
    "退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)
BILL_SUMMARY_HEADER = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"


# ---- keys and primitives (the provider's side) ----


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def sign_message(key: rsa.RSAPrivateKey, *lines: str | bytes) -> str:
    """base64 RSA-SHA256 over the lines, each followed by LF (WeChat's signing string)."""
    message = b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines)
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), SHA256())).decode()


def encrypt_resource(*, apiv3_key: str, plaintext: bytes, associated_data: str, nonce: str | None = None,
                     original_type: str) -> dict[str, str]:
    nonce = nonce or secrets.token_hex(6)  # 12 ASCII characters, like WeChat's
    sealed = AESGCM(apiv3_key.encode()).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {"original_type": original_type, "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": base64.b64encode(sealed).decode(), "associated_data": associated_data,
            "nonce": nonce}


def signed_headers(*, key: rsa.RSAPrivateKey, public_key_id: str, body: bytes, timestamp_s: int,
                   nonce: str | None = None) -> dict[str, str]:
    """The Wechatpay-* headers WeChat puts on answers and callbacks (lower-case names)."""
    nonce = nonce or secrets.token_hex(16)
    return {
        "wechatpay-timestamp": str(timestamp_s),
        "wechatpay-nonce": nonce,
        "wechatpay-signature": sign_message(key, str(timestamp_s), nonce, body),
        "wechatpay-serial": public_key_id,
        "wechatpay-signature-type": AUTH_SCHEMA,
        "request-id": secrets.token_hex(8),
    }


def build_callback(*, key: rsa.RSAPrivateKey, public_key_id: str, apiv3_key: str, event_id: str,
                   event_type: str, summary: str, plaintext: dict[str, Any], timestamp_s: int,
                   original_type: str) -> tuple[dict[str, str], bytes]:
    """A notification as WeChat posts it: (lower-case headers, compact UTF-8 JSON body)."""
    resource = encrypt_resource(apiv3_key=apiv3_key, original_type=original_type,
                                plaintext=json.dumps(plaintext, ensure_ascii=False).encode(),
                                associated_data=original_type)
    envelope = {"id": event_id, "create_time": "2026-11-25T23:04:05+08:00", "resource_type": "encrypt-resource",
                "event_type": event_type, "summary": summary, "resource": resource}
    body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
    headers = signed_headers(key=key, public_key_id=public_key_id, body=body, timestamp_s=timestamp_s)
    headers["content-type"] = "application/json"
    return headers, body


def transaction_plaintext(*, mchid: str, appid: str, out_trade_no: str, trade_state: str, total: int,
                          currency: str = "CNY", transaction_id: str | None = None,
                          trade_type: str = "NATIVE") -> dict[str, Any]:
    paid = trade_state in ("SUCCESS", "REFUND")
    plaintext: dict[str, Any] = {
        "mchid": mchid, "appid": appid, "out_trade_no": out_trade_no, "trade_type": trade_type,
        "trade_state": trade_state, "trade_state_desc": {"SUCCESS": "支付成功"}.get(trade_state, "未支付"),
        "bank_type": "OTHERS", "attach": "", "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": total, "payer_total": total if paid else 0, "currency": currency,
                   "payer_currency": currency},
    }
    if paid:
        plaintext["transaction_id"] = transaction_id or "42000" + secrets.token_hex(12)[:23]
        plaintext["success_time"] = "2026-11-25T23:04:05+08:00"
    return plaintext


def _yuan(fen: int, places: int = 2) -> str:
    text = str((Decimal(fen) / 100).quantize(Decimal(1).scaleb(-places)))
    return text


# ---- the app ----


@dataclass
class Recorded:
    method: str
    path: str  # with its query string, exactly as signed
    headers: dict[str, str]
    body: bytes


@dataclass
class StandIn:
    mchid: str
    appid: str
    merchant_public_key: rsa.RSAPublicKey
    merchant_serial_no: str
    platform_key: rsa.RSAPrivateKey
    public_key_id: str
    apiv3_key: str
    api_base: str = "https://api.standin.test"
    now_s: Callable[[], int] = lambda: int(time.time())
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    refund_status: str = "PROCESSING"  # what POST /refunds answers
    fail_next: tuple[int, str] | None = None  # (status, code) answered once by the next request
    break_signature: bool = False  # sign answers with a wrong signature
    bills: dict[str, bytes] = field(default_factory=dict)
    bound_appids: frozenset[str] = frozenset()  # more apps bound to the mchid (a mobile app, a mini-program)

    # provider-side actions

    def pay(self, out_trade_no: str) -> None:
        payment = self.payments[out_trade_no]
        assert payment["trade_state"] == "NOTPAY", f"the payer cannot pay a {payment['trade_state']} order"
        payment["trade_state"] = "SUCCESS"
        payment["transaction_id"] = "42000" + secrets.token_hex(12)[:23]

    def callback_for(self, out_trade_no: str, *, event_id: str, timestamp_s: int) -> tuple[dict[str, str], bytes]:
        payment = self.payments[out_trade_no]
        plaintext = transaction_plaintext(mchid=self.mchid, appid=payment.get("appid", self.appid),
                                          out_trade_no=out_trade_no,
                                          trade_state=payment["trade_state"], total=payment["total"],
                                          transaction_id=payment.get("transaction_id"),
                                          trade_type=payment.get("trade_type", "NATIVE"))
        return build_callback(key=self.platform_key, public_key_id=self.public_key_id, apiv3_key=self.apiv3_key,
                              event_id=event_id, event_type="TRANSACTION.SUCCESS", summary="支付成功",
                              plaintext=plaintext, timestamp_s=timestamp_s, original_type="transaction")

    def refund_callback_for(self, out_refund_no: str, *, status: str, event_id: str,
                            timestamp_s: int) -> tuple[dict[str, str], bytes]:
        refund = self.refunds[out_refund_no]
        refund["status"] = status
        payment = self.payments[refund["out_trade_no"]]
        plaintext = {
            "mchid": self.mchid, "out_trade_no": refund["out_trade_no"],
            "transaction_id": payment["transaction_id"], "out_refund_no": out_refund_no,
            "refund_id": refund["refund_id"], "refund_status": status,
            "success_time": "2026-11-26T10:00:00+08:00", "user_received_account": "支付用户零钱",
            "amount": {"total": payment["total"], "refund": refund["refund"], "payer_total": payment["total"],
                       "payer_refund": refund["refund"]},
        }
        summary = {"SUCCESS": "退款成功", "ABNORMAL": "退款异常", "CLOSED": "退款关闭"}[status]
        return build_callback(key=self.platform_key, public_key_id=self.public_key_id, apiv3_key=self.apiv3_key,
                              event_id=event_id, event_type=f"REFUND.{status}", summary=summary,
                              plaintext=plaintext, timestamp_s=timestamp_s, original_type="refund")

    # ASGI

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await read_body(scope, receive)
        query = scope["query_string"].decode()
        path = scope["raw_path"].decode().split("?")[0] + (f"?{query}" if query else "")
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append(Recorded(scope["method"], path, headers, body))
        status, answer, media = self._handle(scope["method"], path, headers, body)
        await self._send(send, status, answer, media)

    async def _send(self, send: Any, status: int, answer: bytes, media: str) -> None:
        headers = signed_headers(key=self.platform_key, public_key_id=self.public_key_id, body=answer,
                                 timestamp_s=self.now_s())
        if self.break_signature:
            headers["wechatpay-signature"] = sign_message(self.platform_key, "0", "x", answer)
        headers["content-type"] = media
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": answer})

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        if self.fail_next is not None:
            (status, code), self.fail_next = self.fail_next, None
            return _error(status, code, "系统繁忙")
        problem = self.check_authorization(method, path, headers, body)
        if problem:
            return _error(401, "SIGN_ERROR", problem)
        route, _, query = path.partition("?")
        params = {k: v[0] for k, v in parse_qs(query).items()}
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return _error(400, "PARAM_ERROR", "请求体不是JSON")
        if method == "POST" and route in _TRADE_TYPES:
            return self._order(route.rsplit("/", 1)[1], payload)
        if method == "GET" and route.startswith("/v3/pay/transactions/out-trade-no/"):
            return self._query(route.rsplit("/", 1)[1], params)
        if method == "POST" and route.startswith("/v3/pay/transactions/out-trade-no/") and route.endswith("/close"):
            return self._close(route.split("/")[5], payload)
        if method == "POST" and route == "/v3/refund/domestic/refunds":
            return self._refund(payload)
        if method == "GET" and route.startswith("/v3/refund/domestic/refunds/"):
            out_refund_no = route.rsplit("/", 1)[1]
            if out_refund_no not in self.refunds:
                return _error(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
            return _ok(self._refund_answer(out_refund_no))
        if method == "GET" and route == "/v3/bill/tradebill":
            return self._bill_ticket(params)
        if method == "GET" and route == "/v3/billdownload/file":
            bill = self.bills.get(params.get("token", ""))
            return (200, bill, "application/octet-stream") if bill else _error(404, "NO_STATEMENT_EXIST", "账单不存在")
        return _error(404, "RESOURCE_NOT_EXISTS", "接口不存在")

    def check_authorization(self, method: str, path: str, headers: dict[str, str], body: bytes) -> str | None:
        """WeChat's check of a merchant request; the reason it fails, or None."""
        schema, _, rest = headers.get("authorization", "").partition(" ")
        if schema != AUTH_SCHEMA:
            return "Authorization schema"
        fields = dict(_AUTH_FIELD_RE.findall(rest))
        if fields.get("mchid") != self.mchid or fields.get("serial_no") != self.merchant_serial_no:
            return "mchid or serial_no"
        timestamp, nonce = fields.get("timestamp", ""), fields.get("nonce_str", "")
        if not timestamp.isdigit() or abs(self.now_s() - int(timestamp)) > _TOLERANCE_S or not nonce:
            return "timestamp or nonce"
        if headers.get("wechatpay-serial", self.public_key_id) != self.public_key_id:
            return "Wechatpay-Serial"
        message = f"{method}\n{path}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"
        try:
            self.merchant_public_key.verify(base64.b64decode(fields.get("signature", "")), message,
                                            padding.PKCS1v15(), SHA256())
        except (InvalidSignature, ValueError):
            return "signature"
        return None

    def _order(self, flow: str, payload: dict[str, Any]) -> tuple[int, bytes, str]:
        amount = payload.get("amount") or {}
        otn = payload.get("out_trade_no", "")
        if payload.get("appid") not in {self.appid, *self.bound_appids} or payload.get("mchid") != self.mchid:
            return _error(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        total = amount.get("total")
        if not isinstance(total, int) or isinstance(total, bool) or total < 1:
            return _error(400, "PARAM_ERROR", "amount.total")
        if amount.get("currency", "CNY") != "CNY" or not _OUT_TRADE_NO_RE.match(otn):
            return _error(400, "PARAM_ERROR", "currency or out_trade_no")
        description, notify_url = payload.get("description", ""), payload.get("notify_url", "")
        if not 1 <= len(description) <= 127 or not notify_url.startswith(("https://", "http://")):
            return _error(400, "PARAM_ERROR", "description or notify_url")
        time_expire = payload.get("time_expire")
        if time_expire is not None and not _TIME_EXPIRE_RE.fullmatch(time_expire):
            return _error(400, "PARAM_ERROR", "time_expire")
        problem = _flow_problem(flow, payload)
        if problem:
            return _error(400, "PARAM_ERROR", problem)
        existing = self.payments.get(otn)
        if existing is not None:
            if existing["trade_state"] != "NOTPAY":
                return _error(403, "ORDERPAID", "该订单已支付")
            first = (existing["total"], existing["description"], existing["notify_url"], existing["trade_type"],
                     existing["payer"], existing["scene_info"])
            if first != (total, description, notify_url, _TRADE_TYPES[f"/v3/pay/transactions/{flow}"],
                         payload.get("payer"), payload.get("scene_info")):
                return _error(400, "INVALID_REQUEST", "201 商户订单号重复")
            return _ok(existing["answer"])
        prepay_id = "wx" + secrets.token_hex(16)
        answer = {"native": {"code_url": "weixin://wxpay/bizpayurl?pr=" + secrets.token_urlsafe(6)},
                  "h5": {"h5_url": f"https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={prepay_id}"
                                   "&package=2150917749"}}.get(flow, {"prepay_id": prepay_id})
        self.payments[otn] = {"total": total, "description": description, "notify_url": notify_url,
                              "trade_state": "NOTPAY", "time_expire": time_expire, "prepay_id": prepay_id,
                              "appid": payload["appid"],
                              "trade_type": _TRADE_TYPES[f"/v3/pay/transactions/{flow}"], "answer": answer,
                              "payer": payload.get("payer"), "scene_info": payload.get("scene_info"),
                              "code_url": answer.get("code_url")}
        return _ok(answer)

    # the payer's side of the flows

    def pay_with_client_params(self, flow: str, params: dict[str, str]) -> str:
        """What WeChat's client does with the parameters a jsapi page or an app hands it: checks
        the merchant's signature over the prepay_id, then the payer pays. The out_trade_no paid."""
        if flow == "jsapi":
            assert set(params) == {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"}, params
            assert params["signType"] == "RSA" and params["package"].startswith("prepay_id=")
            appid, prepay_id, signature = params["appId"], params["package"][len("prepay_id="):], params["paySign"]
            lines = (params["appId"], params["timeStamp"], params["nonceStr"], params["package"])
        else:
            assert flow == "app" and set(params) == {"appid", "partnerid", "prepayid", "package", "noncestr",
                                                     "timestamp", "sign"}, params
            assert params["package"] == "Sign=WXPay" and params["partnerid"] == self.mchid
            appid, prepay_id, signature = params["appid"], params["prepayid"], params["sign"]
            lines = (params["appid"], params["timestamp"], params["noncestr"], params["prepayid"])
        placed = next((p for p in self.payments.values() if p.get("prepay_id") == prepay_id), {})
        assert appid == placed.get("appid", self.appid), "signed for another app than the order's"
        message = "".join(f"{line}\n" for line in lines).encode()
        self.merchant_public_key.verify(base64.b64decode(signature), message, padding.PKCS1v15(), SHA256())
        return self._pay_prepay(prepay_id, trade_type=flow.upper())

    def pay_h5(self, url: str) -> str:
        """The payer's mobile browser opens the h5_url (WeChat checks the Referer domain, which a
        test cannot show) and pays. The out_trade_no paid."""
        query = parse_qs(url.partition("?")[2])
        assert url.startswith("https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?"), url
        return self._pay_prepay(query["prepay_id"][0], trade_type="MWEB")

    def _pay_prepay(self, prepay_id: str, *, trade_type: str) -> str:
        otn = next(o for o, p in self.payments.items() if p["prepay_id"] == prepay_id)
        assert self.payments[otn]["trade_type"] == trade_type, "paid in another flow than ordered"
        self.pay(otn)
        return otn

    def _query(self, otn: str, params: dict[str, str]) -> tuple[int, bytes, str]:
        if params.get("mchid") != self.mchid:
            return _error(400, "PARAM_ERROR", "mchid")
        payment = self.payments.get(otn)
        if payment is None:
            return _error(404, "ORDER_NOT_EXIST", "订单不存在")
        return _ok(transaction_plaintext(mchid=self.mchid, appid=payment.get("appid", self.appid), out_trade_no=otn,
                                         trade_state=payment["trade_state"], total=payment["total"],
                                         transaction_id=payment.get("transaction_id"),
                                         trade_type=payment["trade_type"]))

    def _close(self, otn: str, payload: dict[str, Any]) -> tuple[int, bytes, str]:
        if payload != {"mchid": self.mchid}:
            return _error(400, "PARAM_ERROR", "mchid")
        payment = self.payments.get(otn)
        if payment is None:
            return _error(404, "ORDER_NOT_EXIST", "订单不存在")
        if payment["trade_state"] not in ("NOTPAY", "CLOSED"):
            return _error(400, "ORDERPAID", "订单已支付")
        payment["trade_state"] = "CLOSED"
        return 204, b"", "application/json"

    def closes(self) -> list[str]:
        """The out_trade_nos the channel asked to close."""
        return [r.path.split("/")[5] for r in self.requests if r.method == "POST" and r.path.endswith("/close")]

    def _refund(self, payload: dict[str, Any]) -> tuple[int, bytes, str]:
        payment = self.payments.get(payload.get("out_trade_no", ""))
        amount = payload.get("amount") or {}
        out_refund_no = payload.get("out_refund_no", "")
        if payment is None or payment["trade_state"] not in ("SUCCESS", "REFUND"):
            return _error(404, "RESOURCE_NOT_EXISTS", "订单不存在或未支付")
        if amount.get("total") != payment["total"] or amount.get("currency") != "CNY":
            return _error(400, "PARAM_ERROR", "订单金额与之前请求不一致")
        if out_refund_no in self.refunds:  # the same out_refund_no is the same refund
            return _ok(self._refund_answer(out_refund_no))
        refunded = sum(r["refund"] for r in self.refunds.values() if r["out_trade_no"] == payload["out_trade_no"])
        if not isinstance(amount.get("refund"), int) or not 0 < amount["refund"] <= payment["total"] - refunded:
            return _error(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
        payment["trade_state"] = "REFUND"
        self.refunds[out_refund_no] = {"out_trade_no": payload["out_trade_no"], "refund": amount["refund"],
                                       "refund_id": "50000" + secrets.token_hex(12)[:24],
                                       "status": self.refund_status}
        return _ok(self._refund_answer(out_refund_no))

    def _refund_answer(self, out_refund_no: str) -> dict[str, Any]:
        refund = self.refunds[out_refund_no]
        payment = self.payments[refund["out_trade_no"]]
        return {
            "refund_id": refund["refund_id"], "out_refund_no": out_refund_no,
            "transaction_id": payment["transaction_id"], "out_trade_no": refund["out_trade_no"],
            "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
            "create_time": "2026-11-26T10:00:00+08:00", "status": refund["status"], "funds_account": "AVAILABLE",
            "amount": {"total": payment["total"], "refund": refund["refund"], "payer_total": payment["total"],
                       "payer_refund": refund["refund"], "settlement_refund": refund["refund"],
                       "settlement_total": payment["total"], "discount_refund": 0, "currency": "CNY"},
        }

    def _bill_ticket(self, params: dict[str, str]) -> tuple[int, bytes, str]:
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", params.get("bill_date", "")):
            return _error(400, "PARAM_ERROR", "bill_date")
        text = self.trade_bill().encode()
        token = secrets.token_urlsafe(8)
        self.bills[token] = gzip.compress(text) if params.get("tar_type") == "GZIP" else text
        return _ok({"download_url": f"{self.api_base}/v3/billdownload/file?token={token}",
                    "hash_type": "SHA1", "hash_value": hashlib.sha1(text).hexdigest()})

    def trade_bill(self) -> str:
        """bill_type=ALL for everything in memory: SUCCESS rows, then REFUND rows, then the summary."""
        rows, total_settled, total_refund, total_fee = [], 0, 0, Decimal(0)
        for otn, p in self.payments.items():
            if p["trade_state"] in ("SUCCESS", "REFUND"):
                fee = (Decimal(p["total"]) * _FEE_RATE).quantize(Decimal(1), ROUND_HALF_UP)
                rows.append(_bill_row(p["transaction_id"], otn, "SUCCESS", _yuan(p["total"]), "0", "0", "0.00",
                                      "", "", _yuan(int(fee), 5), _yuan(p["total"]), "0.00", p["description"]))
                total_settled += p["total"]
                total_fee += fee
        for orn, r in self.refunds.items():
            p = self.payments[r["out_trade_no"]]
            fee = -(Decimal(r["refund"]) * _FEE_RATE).quantize(Decimal(1), ROUND_HALF_UP)
            rows.append(_bill_row(p["transaction_id"], r["out_trade_no"], "REFUND", "0.00", r["refund_id"], orn,
                                  _yuan(r["refund"]), "ORIGINAL", r["status"], _yuan(int(fee), 5), "0.00",
                                  _yuan(r["refund"]), p["description"]))
            total_refund += r["refund"]
            total_fee += fee
        summary = ",".join("`" + v for v in (str(len(rows)), _yuan(total_settled), _yuan(total_refund), "0.00",
                                              _yuan(int(total_fee), 5), _yuan(total_settled), _yuan(total_refund)))
        return "\r\n".join([BILL_HEADER, *rows, BILL_SUMMARY_HEADER, summary]) + "\r\n"


def _bill_row(transaction_id: str, otn: str, state: str, settled: str, refund_id: str, out_refund_no: str,
              refund: str, refund_type: str, refund_status: str, fee: str, order_amount: str, applied: str,
              description: str) -> str:
    values = ["2026-11-25 23:04:05", "wx8888888888888888", "1230000109", "0", "", transaction_id, otn,
              "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "NATIVE", state, "OTHERS", "CNY", settled, "0.00", refund_id,
              out_refund_no, refund, "0.00", refund_type, refund_status, description, "", fee, "0.60%",
              order_amount, applied, ""]
    return ",".join("`" + v for v in values)


_TRADE_TYPES = {"/v3/pay/transactions/native": "NATIVE", "/v3/pay/transactions/jsapi": "JSAPI",
                "/v3/pay/transactions/app": "APP", "/v3/pay/transactions/h5": "MWEB"}


def _flow_problem(flow: str, payload: dict[str, Any]) -> str | None:
    """What WeChat refuses in a flow's own fields (jsapi's payer, h5's scene_info)."""
    payer, scene = payload.get("payer"), payload.get("scene_info")
    if flow == "jsapi":
        if not isinstance(payer, dict) or not re.fullmatch(r"[A-Za-z0-9_\-]{1,128}", str(payer.get("openid", ""))):
            return "payer.openid"
    elif payer is not None:
        return "payer"
    if flow == "h5":
        h5_info = scene.get("h5_info") if isinstance(scene, dict) else None
        if not isinstance(h5_info, dict) or h5_info.get("type") not in ("iOS", "Android", "Wap"):
            return "scene_info.h5_info.type"
        if not re.fullmatch(r"[0-9a-fA-F.:]{2,45}", str(scene.get("payer_client_ip", ""))):
            return "scene_info.payer_client_ip"
    return None


_TIME_EXPIRE_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d")


def _ok(payload: dict[str, Any]) -> tuple[int, bytes, str]:
    return 200, json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(), "application/json"


def _error(status: int, code: str, message: str) -> tuple[int, bytes, str]:
    return status, json.dumps({"code": code, "message": message}, ensure_ascii=False).encode(), "application/json"
