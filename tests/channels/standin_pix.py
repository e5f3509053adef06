"""A local stand-in for a PSP's PIX API (bacen/pix-api v2), for tests only.

A plain ASGI app (served through httpx.ASGITransport, or on a real port by uvicorn, with TLS and
required client certificates for the mTLS test). It checks each request as a PSP does: an OAuth2
client-credentials token from `/oauth/token` (HTTP Basic), a bearer token on every API call, the
documented shapes (txid of 26-35 letters and digits, `valor.original` as "12.34", the merchant's
own `chave`), and answers with the spec's JSON and its RFC 7807 problems (`CobOperacaoInvalida`,
`CobNaoEncontrado`, `PixDevolucaoInvalida`, `PixDevolucaoNaoEncontrada`, `WebhookOperacaoInvalida`,
`AcessoNegado`). Charges, pix and returns live in memory; a test pays a charge with `pay` (it
goes CONCLUIDA with a pix entry) and delivers the PSP's callback with `notice`/`deliver`.
Written against the spec, not against the channel's code (its BR Code encoder is its own).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx

from tests.asgi import read_body

__all__ = ["PixStandIn", "copia_e_cola", "e2eid"]

_ERROR = "https://pix.bcb.gov.br/api/v2/error/"
_TXID_RE = re.compile(r"^[a-zA-Z0-9]{26,35}$")
_RETURN_ID_RE = re.compile(r"^[a-zA-Z0-9]{1,35}$")
_E2EID_RE = re.compile(r"^[a-zA-Z0-9]{32}$")
_VALOR_RE = re.compile(r"^\d{1,10}\.\d{2}$")
_ALNUM = string.ascii_letters + string.digits


def e2eid(ispb: str = "12345678") -> str:
    """An EndToEndId: E, the payer PSP's ISPB, yyyyMMddHHmm, 11 characters (32 in all)."""
    return "E" + ispb + "202611251504" + "".join(secrets.choice(_ALNUM) for _ in range(11))


def _tlv(tag: str, value: str) -> str:
    return f"{tag}{len(value):02d}{value}"


def copia_e_cola(*, location: str, valor: str, name: str, city: str) -> str:
    """The dynamic BR Code a PSP returns as pixCopiaECola (with the amount, field 54)."""
    payload = (_tlv("00", "01") + _tlv("01", "12") + _tlv("26", _tlv("00", "br.gov.bcb.pix") + _tlv("25", location))
               + _tlv("52", "0000") + _tlv("53", "986") + _tlv("54", valor) + _tlv("58", "BR") + _tlv("59", name)
               + _tlv("60", city) + _tlv("62", _tlv("05", "***")) + "6304")
    return payload + f"{binascii.crc_hqx(payload.encode(), 0xFFFF):04X}"


def _cents(valor: str) -> int:
    whole, _, frac = valor.partition(".")
    return int(whole) * 100 + int(frac)


def _valor(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


class _Problem(Exception):
    def __init__(self, status: int, kind: str, title: str, detail: str, violacoes: list[dict[str, str]] | None = None):
        super().__init__(kind)
        self.status = status
        self.body: dict[str, Any] = {"type": _ERROR + kind, "title": title, "status": status, "detail": detail}
        if violacoes:
            self.body["violacoes"] = violacoes


def _cob_invalid(razao: str, propriedade: str) -> _Problem:
    return _Problem(400, "CobOperacaoInvalida", "Cobrança inválida.",
                    "A requisição que busca alterar ou criar uma cobrança para pagamento imediato não respeita o "
                    "_schema_ ou está semanticamente errada.", [{"razao": razao, "propriedade": propriedade}])


def _return_invalid(razao: str) -> _Problem:
    return _Problem(400, "PixDevolucaoInvalida", "Devolução inválida.",
                    "A presente requisição de devolução não respeita o _schema_ ou não faz sentido semanticamente.",
                    [{"razao": razao, "propriedade": "devolucao.valor"}])


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class PixStandIn:
    client_id: str
    client_secret: str
    chave: str
    host: str = "pix.standin.test"
    merchant_name: str = "PSP STANDIN"
    merchant_city: str = "SAO PAULO"
    copia_e_cola: bool = True  # False: answers with `location` only, as some PSPs do
    token_expires_in: int = 3600
    return_status: str = "EM_PROCESSAMENTO"  # what PUT /devolucao answers
    cobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    webhooks: dict[str, str] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)
    fail_next: tuple[int, str] | None = None  # (status, error type) answered once by the next API call

    # ---- provider-side actions ----

    def pay(self, txid: str, *, valor: str | None = None) -> dict[str, Any]:
        """The payer pays: the charge goes CONCLUIDA with one pix (its amount, or `valor`)."""
        cob = self.cobs[txid]
        assert cob["status"] == "ATIVA", f"a {cob['status']} charge cannot be paid"
        entry = {"endToEndId": e2eid(), "txid": txid, "valor": valor or cob["valor"]["original"],
                 "horario": "2026-11-25T15:04:05.000Z", "infoPagador": "Jogo", "devolucoes": []}
        cob["status"] = "CONCLUIDA"
        cob["pix"] = [entry]
        return entry

    def notice(self, *entries: dict[str, Any]) -> bytes:
        """The PSP's callback body for these pix (what it POSTs to <webhookUrl>/pix)."""
        keep = ("endToEndId", "txid", "valor", "horario", "infoPagador", "devolucoes")
        return json.dumps({"pix": [{k: e[k] for k in keep if k in e} for e in entries]}).encode()

    def deliver(self, *entries: dict[str, Any]) -> httpx.Response:
        """POST the callback to the registered webhook URL with /pix appended, as the PSP does."""
        return httpx.post(self.webhooks[self.chave] + "/pix", content=self.notice(*entries),
                          headers={"Content-Type": "application/json"}, timeout=30)

    def settle_return(self, e2e: str, return_id: str, status: str) -> dict[str, Any]:
        """A return reaches a final status (DEVOLVIDO or NAO_REALIZADO); returns its pix entry."""
        assert status in ("DEVOLVIDO", "NAO_REALIZADO")
        entry = self._pix(e2e)
        returned = next(r for r in entry["devolucoes"] if r["id"] == return_id)
        returned["status"] = status
        if status == "DEVOLVIDO":
            returned["horario"]["liquidacao"] = "2026-11-26T10:00:00.000Z"
        return entry

    def returns(self) -> list[dict[str, Any]]:
        return [r for cob in self.cobs.values() for e in cob.get("pix", []) for r in e["devolucoes"]]

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    # ---- ASGI ----

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_body(scope, receive)
        path = unquote(scope["path"])
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append(Recorded(scope["method"], path, headers, body))
        try:
            status, answer = self._handle(scope["method"], path, headers, body)
            media = "application/json"
        except _Problem as problem:
            status, answer, media = problem.status, problem.body, "application/problem+json"
        raw = json.dumps(answer, ensure_ascii=False).encode() if answer is not None else b""
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media.encode())]})
        await send({"type": "http.response.body", "body": raw})

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        if method == "POST" and path == "/oauth/token":
            return self._token(headers, body)
        if headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens:
            raise _Problem(401, "AcessoNegado", "Não autorizado", "Token de acesso ausente, inválido ou expirado.")
        if self.fail_next is not None:
            (status, kind), self.fail_next = self.fail_next, None
            raise _Problem(status, kind, kind, "Falha simulada.")
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            raise _Problem(400, "RequisicaoInvalida", "Requisição inválida.", "O corpo não é JSON.") from None
        parts = path.strip("/").split("/")
        if parts[0] == "cob" and len(parts) == 2:
            if method == "PUT":
                return self._put_cob(parts[1], payload)
            if method == "PATCH":
                return self._patch_cob(parts[1], payload)
            if method == "GET":
                return 200, self._cob(parts[1])
        if parts[0] == "webhook" and len(parts) == 2 and method == "PUT":
            return self._put_webhook(parts[1], payload)
        if parts[0] == "pix" and len(parts) == 4 and parts[2] == "devolucao":
            if method == "PUT":
                return self._put_return(parts[1], parts[3], payload)
            if method == "GET":
                return 200, self._return(parts[1], parts[3])
        raise _Problem(404, "NaoEncontrado", "Não Encontrado", "Entidade não encontrada.")

    def _token(self, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        scheme, _, encoded = headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if scheme != "Basic" or (user, password) != (self.client_id, self.client_secret):
            return 401, {"error": "invalid_client", "error_description": "client authentication failed"}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.token_expires_in,
                     "scope": form.get("scope", "")}

    def _put_cob(self, txid: str, payload: dict[str, Any]) -> tuple[int, Any]:
        if not _TXID_RE.match(txid):
            raise _cob_invalid("O campo txid não respeita o _schema_.", "txid")
        expiracao = (payload.get("calendario") or {}).get("expiracao")
        if not isinstance(expiracao, int) or isinstance(expiracao, bool) or expiracao <= 0:
            raise _cob_invalid("O campo cob.calendario.expiracao é igual ou menor que zero.", "cob.calendario.expiracao")
        original = (payload.get("valor") or {}).get("original")
        if not isinstance(original, str) or not _VALOR_RE.match(original) or _cents(original) == 0:
            raise _cob_invalid("O campo cob.valor.original não respeita o _schema_.", "cob.valor.original")
        if payload.get("chave") != self.chave:
            raise _cob_invalid("O campo cob.chave corresponde a uma conta que não pertence a este usuário recebedor.",
                               "cob.chave")
        existing = self.cobs.get(txid)
        if existing is not None and existing["status"] != "ATIVA":
            raise _cob_invalid("A cobrança já existe, não está no status ATIVA.", "cob.status")
        location = f"{self.host}/qr/v2/{secrets.token_hex(16)}" if existing is None else existing["location"]
        cob = {
            "calendario": {"criacao": "2026-11-25T15:00:00.000Z", "expiracao": expiracao},
            "txid": txid, "revisao": 0 if existing is None else existing["revisao"] + 1,
            "loc": {"id": len(self.cobs) + 1, "location": location, "tipoCob": "cob"},
            "location": location, "status": "ATIVA", "valor": {"original": original}, "chave": self.chave,
        }
        if "solicitacaoPagador" in payload:
            cob["solicitacaoPagador"] = payload["solicitacaoPagador"]
        if self.copia_e_cola:
            cob["pixCopiaECola"] = copia_e_cola(location=location, valor=original, name=self.merchant_name,
                                                city=self.merchant_city)
        self.cobs[txid] = cob
        return (201 if existing is None else 200), cob

    def _cob(self, txid: str) -> dict[str, Any]:
        cob = self.cobs.get(txid)
        if cob is None:
            raise _Problem(404, "CobNaoEncontrado", "Cobrança não encontrada.",
                           "A cobrança em questão não foi encontrada para o txid informado.")
        return cob

    def _patch_cob(self, txid: str, payload: dict[str, Any]) -> tuple[int, Any]:
        cob = self._cob(txid)
        if cob["status"] != "ATIVA":
            raise _cob_invalid("A cobrança não está ATIVA.", "cob.status")
        if payload != {"status": "REMOVIDA_PELO_USUARIO_RECEBEDOR"}:
            raise _cob_invalid("o campo cob.status não respeita o _schema_.", "cob.status")
        cob["status"] = "REMOVIDA_PELO_USUARIO_RECEBEDOR"
        return 200, cob

    def _put_webhook(self, chave: str, payload: dict[str, Any]) -> tuple[int, Any]:
        url = payload.get("webhookUrl")
        if chave != self.chave or not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise _Problem(400, "WebhookOperacaoInvalida", "Webhook inválido.",
                           "A presente requisição busca criar um webhook sem respeitar o _schema_ ou, ainda, com "
                           "sentido semanticamente inválido.")
        self.webhooks[chave] = url
        return 200, None

    def _pix(self, e2e: str) -> dict[str, Any]:
        for cob in self.cobs.values():
            for entry in cob.get("pix", []):
                if entry["endToEndId"] == e2e:
                    return entry
        raise _Problem(404, "PixNaoEncontrado", "Pix não encontrado.", "Pix não encontrado para o e2eid informado.")

    def _put_return(self, e2e: str, return_id: str, payload: dict[str, Any]) -> tuple[int, Any]:
        if not _E2EID_RE.match(e2e) or not _RETURN_ID_RE.match(return_id):
            raise _return_invalid("e2eid ou id não respeitam o _schema_.")
        entry = self._pix(e2e)
        valor = payload.get("valor")
        if not isinstance(valor, str) or not _VALOR_RE.match(valor) or _cents(valor) == 0:
            raise _return_invalid("O campo devolucao.valor não respeita o _schema_.")
        if any(r["id"] == return_id for r in entry["devolucoes"]):
            raise _return_invalid("O id informado já foi utilizado por outra devolução deste pix.")
        returned = sum(_cents(r["valor"]) for r in entry["devolucoes"] if r["status"] != "NAO_REALIZADO")
        if returned + _cents(valor) > _cents(entry["valor"]):
            raise _return_invalid("A devolução excederia o valor do pix originário.")
        record = {"id": return_id, "rtrId": "D12345678202611261000" + "".join(secrets.choice(_ALNUM) for _ in range(11)),
                  "valor": _valor(_cents(valor)), "natureza": payload.get("natureza", "ORIGINAL"),
                  "horario": {"solicitacao": "2026-11-26T09:59:00.000Z"}, "status": self.return_status}
        if "descricao" in payload:
            record["descricao"] = payload["descricao"]
        entry["devolucoes"].append(record)
        return 201, record

    def _return(self, e2e: str, return_id: str) -> dict[str, Any]:
        entry = self._pix(e2e)
        for record in entry["devolucoes"]:
            if record["id"] == return_id:
                return record
        raise _Problem(404, "PixDevolucaoNaoEncontrada", "Devolução não encontrada.",
                       "Devolução não encontrada para o e2eid informado.")
