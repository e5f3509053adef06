"""Pure conversion between the PIX API's wire types (bacen/pix-api, v2) and APSS's neutral types.

No I/O here. Every charge (`cob`) and return (`devolucao`) status is listed, with an `unknown`
fallback that never guesses. Ids: a charge's `txid` is our payment id without its underscore
(`pay_06h3...` -> `pay06h3...`, 29 letters and digits: the API wants 26 to 35), a return's `id`
our refund id likewise (1 to 35), so both map back without a lookup.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from apss.channels.base import (
    CallbackEvent,
    PaymentReport,
    PaymentRequest,
    RefundRequest,
    RefundResult,
)
from apss.channels.pix.brcode import amount_text
from apss.domain.payments import CallbackKind, PaymentStatus

__all__ = [
    "CURRENCY",
    "Cob",
    "Devolucao",
    "Notice",
    "Pix",
    "Problem",
    "Token",
    "cob_body",
    "devolucao_body",
    "is_e2eid",
    "minor",
    "payment_id_for",
    "payment_report",
    "payment_status",
    "paid_entry",
    "refund_events",
    "refund_id_for",
    "refund_result",
    "refund_status",
    "return_id_for",
    "txid_for",
]

CURRENCY = "BRL"
_TXID_RE = re.compile(r"^[A-Za-z0-9]{26,35}$")
_RETURN_ID_RE = re.compile(r"^[A-Za-z0-9]{1,35}$")
_E2EID_RE = re.compile(r"^[A-Za-z0-9]{32}$")
_VALOR_RE = re.compile(r"^(\d{1,10})\.(\d{2})$")
_SOLICITACAO_CHARS_MAX = 140  # solicitacaoPagador and devolucao.descricao


# ---- wire types (PSPs add fields: unknown ones are tolerated) ----


class _Wire(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Token(_Wire):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int = 3600


class Problem(_Wire):
    """RFC 7807, as the PIX API answers every error (`type` .../api/v2/error/<TipoErro>)."""

    type: str = ""
    title: str = ""
    status: int | None = None
    detail: str = ""


class Valor(_Wire):
    original: str


class Calendario(_Wire):
    criacao: str | None = None
    expiracao: int | None = None


class DevolucaoHorario(_Wire):
    solicitacao: str | None = None
    liquidacao: str | None = None


class Devolucao(_Wire):
    id: str
    rtrId: str  # noqa: N815 (the wire's name)
    valor: str
    status: str
    horario: DevolucaoHorario | None = None
    motivo: str | None = None


class Pix(_Wire):
    """A pix received, as GET /cob/{txid} lists it under `pix` (with its returns)."""

    endToEndId: str  # noqa: N815
    valor: str
    horario: str
    txid: str | None = None
    devolucoes: list[Devolucao] = []


class Cob(_Wire):
    """An immediate charge: the answer to PUT and GET /cob/{txid}."""

    txid: str
    status: str
    valor: Valor
    calendario: Calendario | None = None
    chave: str | None = None
    location: str | None = None
    pixCopiaECola: str | None = None  # noqa: N815
    pix: list[Pix] = []


class NoticePix(_Wire):
    endToEndId: str  # noqa: N815
    valor: str
    horario: str
    txid: str | None = None


class Notice(_Wire):
    """The PSP's callback body, POSTed to <webhookUrl>/pix. Not signed: only a hint of what to ask."""

    pix: list[NoticePix]


# ---- ids and amounts ----


def txid_for(payment_id: str) -> str:
    txid = payment_id.replace("_", "")
    assert _TXID_RE.match(txid), payment_id
    return txid


def payment_id_for(txid: str) -> str | None:
    """Our payment id back from a txid we made (`pay...` -> `pay_...`); None for any other txid."""
    if not txid.startswith("pay") or not _TXID_RE.match(txid):
        return None
    return f"pay_{txid[3:]}"


def return_id_for(refund_id: str) -> str:
    return_id = refund_id.replace("_", "")
    assert _RETURN_ID_RE.match(return_id), refund_id
    return return_id


def refund_id_for(return_id: str) -> str | None:
    if not return_id.startswith("rfd") or not _RETURN_ID_RE.match(return_id) or len(return_id) < 4:
        return None
    return f"rfd_{return_id[3:]}"


def is_e2eid(text: str) -> bool:
    return bool(_E2EID_RE.match(text))


def minor(valor: str) -> int:
    """The API's "12.34" -> 1234 centavos, exactly; ValueError for anything else."""
    match = _VALOR_RE.match(valor)
    if match is None:
        raise ValueError(f"not a PIX amount: {valor[:20]!r}")
    return int(match.group(1)) * 100 + int(match.group(2))


# ---- statuses ----

# cob.status. A charge past its expiry stays ATIVA in the API (the status is the record's, not
# the charge's): the payer's bank refuses it, and APSS expires the order on its own clock.
_COB_STATUSES: dict[str, PaymentStatus] = {
    "ATIVA": PaymentStatus.REQUIRES_ACTION,
    "CONCLUIDA": PaymentStatus.SUCCEEDED,
    "REMOVIDA_PELO_USUARIO_RECEBEDOR": PaymentStatus.CANCELED,
    "REMOVIDA_PELO_PSP": PaymentStatus.CANCELED,
}

_RETURN_STATUSES: dict[str, Literal["pending", "succeeded", "failed"]] = {
    "EM_PROCESSAMENTO": "pending",
    "DEVOLVIDO": "succeeded",
    "NAO_REALIZADO": "failed",
}


def payment_status(status: str) -> PaymentStatus:
    return _COB_STATUSES.get(status, PaymentStatus.UNKNOWN)


def refund_status(status: str) -> Literal["pending", "succeeded", "failed"]:
    return _RETURN_STATUSES.get(status, "pending")  # unknown: not known yet, never a guess


# ---- requests ----


def cob_body(request: PaymentRequest, *, chave: str, expiracao_s: int) -> dict[str, Any]:
    """PUT /cob/{txid}: the amount as "12.34" from integer centavos, the reservation as expiry."""
    assert request.currency == CURRENCY, request.currency
    assert expiracao_s > 0 and chave
    body: dict[str, Any] = {
        "calendario": {"expiracao": expiracao_s},
        "valor": {"original": amount_text(request.amount)},
        "chave": chave,
    }
    if request.description:
        body["solicitacaoPagador"] = request.description[:_SOLICITACAO_CHARS_MAX]
    return body


def devolucao_body(request: RefundRequest) -> dict[str, Any]:
    """PUT /pix/{e2eid}/devolucao/{id}: a return of a common pix (natureza ORIGINAL)."""
    assert request.currency == CURRENCY and request.amount > 0
    body: dict[str, Any] = {"valor": amount_text(request.amount), "natureza": "ORIGINAL"}
    if request.reason:
        body["descricao"] = request.reason[:_SOLICITACAO_CHARS_MAX]
    return body


# ---- answers ----


def paid_entry(cob: Cob) -> Pix | None:
    """The pix that paid a CONCLUIDA charge (a charge takes one payment); None otherwise."""
    if payment_status(cob.status) is not PaymentStatus.SUCCEEDED or not cob.pix:
        return None
    return cob.pix[0]


def payment_report(cob: Cob) -> PaymentReport:
    status = payment_status(cob.status)
    entry = paid_entry(cob)
    if status is PaymentStatus.SUCCEEDED and entry is None:
        status = PaymentStatus.UNKNOWN  # "paid" without the pix that paid it: ask again later
    return PaymentReport(
        status=status,
        provider_ref=cob.txid,
        amount=minor(entry.valor) if entry else None,
        currency=CURRENCY if entry else None,
        failure_code=cob.status if status is PaymentStatus.CANCELED else None,
        provider_refs=[entry.endToEndId] if entry else [],
    )


def refund_result(answer: Devolucao) -> RefundResult:
    status = refund_status(answer.status)
    return RefundResult(provider_refund_ref=answer.rtrId, status=status,
                        failure_code=answer.status if status == "failed" else None)


def refund_events(cob: Cob, entry: Pix) -> list[CallbackEvent]:
    """One event per return of `entry` that reached a final status (the PSP calls back for those
    too). Event ids name the return and its status, so each is applied once."""
    events = []
    for returned in entry.devolucoes:
        status = refund_status(returned.status)
        if status == "pending":
            continue
        events.append(CallbackEvent(
            event_id=f"devolucao:{returned.rtrId}:{returned.status}",
            kind=CallbackKind.REFUND_SUCCEEDED if status == "succeeded" else CallbackKind.REFUND_FAILED,
            payment_id=payment_id_for(cob.txid), provider_ref=cob.txid, amount=minor(returned.valor),
            currency=CURRENCY, failure_code=returned.status if status == "failed" else None,
            refund_id=refund_id_for(returned.id), provider_refund_ref=returned.rtrId,
        ))
    return events
