"""Sandbox wire types (API.md "Sandbox callbacks") and their pure conversion; magic values.

Magic values (order `metadata["sandbox_outcome"]`, read when the payer pays):
- `declined`            the payment fails with failure_code `card_declined`
- `insufficient_funds`  the payment fails with failure_code `insufficient_funds`
- `delay_callback:N`    the callback is sent N seconds (1-3600) after the payer acted
- `duplicate_callback`  the same signed callback (same event id) is sent twice
- `lost_callback`       the payment completes but its callback is never sent: only a status
                        query (the janitor's) can tell
- `refund_fails`        refunds of the order fail (`refund_declined`)
- `three_ds_frictionless`  a payment a risk rule sent to 3-D Secure passes without a challenge
                        (the payer page shows no challenge step)
- `three_ds_fails`      the 3-D Secure challenge fails whatever the payer does: the payment fails
                        with `authentication_failed`
A payment that needs 3-D Secure (its provider_ref ends in `.3ds`) shows a challenge step on the
payer page (Pass / Fail; Fail ends it with `authentication_failed`); the API's `succeed` stands
for a payer who passed it.

The card (every succeeded callback reports one, for the risk rules at callback time): order
metadata `sandbox_card_fingerprint`, `sandbox_card_bin`, `sandbox_card_country`, by default
`sbx_fp_4242`, `424242`, `US`.

Renewal magic values (a subscription's `metadata["sandbox_renewal"]`, copied onto its orders, read
when a renewal charges the saved method; `metadata["renewal_attempt"]` is the 1-based count of
renewal charge attempts in the subscription's life, fallback attempts included, set by APSS):
- `declined`            every renewal charge declines (`card_declined`)
- `declined:N`          the first N renewal charge attempts decline, later ones succeed
- `hard_decline`        declines with `stolen_card` (a hard decline: never retried)

Statements (`parse_statement`, for reconciliation): a UTF-8 CSV whose first row is exactly the
header `type,provider_ref,payment_id,amount,fee,currency,occurred_at`, then one row per balance
movement:
- `type`          `payment` or `refund`;
- `provider_ref`  the sandbox's id of the movement: `sbx_...` for a payment (PaymentCreated's
                  provider_ref), `sbxre_...` for a refund (RefundResult's provider_refund_ref);
- `payment_id`    our payment id (`pay_...`), or empty when the sandbox does not know it;
- `amount`        integer minor units, signed as the balance moves: a payment is positive, a
                  refund negative (`-500`);
- `fee`           integer minor units (>= 0) the sandbox kept on that movement;
- `currency`      ISO 4217, upper-case (`USD`);
- `occurred_at`   RFC 3339 (`2026-11-25T15:04:05Z`); without an offset it is UTC.
Blank rows are skipped; at most `STATEMENT_ROWS_MAX` rows; a bad row raises ValueError naming its
line (the header is line 1).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from typing import Literal

import msgspec

from apss.channels.base import CallbackEvent, DisputeReport, StatementLine
from apss.domain.money import is_iso_currency
from apss.domain.payments import CallbackKind
from apss.errors import CallbackRejected

__all__ = [
    "MAGIC_KEY",
    "STATEMENT_HEADER",
    "STATEMENT_ROWS_MAX",
    "SandboxDisputeData",
    "THREE_DS_SUFFIX",
    "SandboxEvent",
    "SandboxOutcome",
    "build_event",
    "card_of",
    "decode_event",
    "needs_challenge",
    "parse_magic",
    "renewal_decline",
    "statement_lines",
    "to_neutral",
]

MAGIC_KEY = "sandbox_outcome"
RENEWAL_MAGIC_KEY = "sandbox_renewal"
RENEWAL_ATTEMPT_KEY = "renewal_attempt"
_DECLINED_N_RE = re.compile(r"^declined:(\d{1,4})$")
_DELAY_RE = re.compile(r"^delay_callback:(\d{1,4})$")


class SandboxDisputeData(msgspec.Struct, frozen=True, kw_only=True):
    """The sandbox's dispute on `dispute.*` events: its id (`sbxdp_...`), status, reason, and
    when evidence is due (unix seconds)."""

    id: str
    status: Literal["needs_response", "under_review", "won", "lost"]
    reason: str
    evidence_due_by: int | None = None


class SandboxEventData(msgspec.Struct, frozen=True, kw_only=True):
    payment_id: str
    amount: int
    currency: str
    provider_ref: str
    failure_code: str | None = None
    refund_id: str | None = None
    card_fingerprint: str | None = None
    card_bin: str | None = None
    card_country: str | None = None
    dispute: SandboxDisputeData | None = None


class SandboxEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: Literal["payment.succeeded", "payment.failed", "refund.succeeded", "refund.failed", "dispute.created",
                  "dispute.updated", "dispute.closed"]
    created: int
    data: SandboxEventData


_decoder = msgspec.json.Decoder(SandboxEvent)
_encoder = msgspec.json.Encoder()


class SandboxOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What the sandbox does when the payer acts, after magic values are applied."""

    succeeded: bool
    failure_code: str | None
    delay_s: int
    copies: int


THREE_DS_SUFFIX = ".3ds"  # a provider_ref of a payment that needs 3-D Secure


def needs_challenge(metadata: dict[str, str], *, provider_ref: str) -> bool:
    """Does the payer page show the 3-D Secure challenge step before paying?"""
    return provider_ref.endswith(THREE_DS_SUFFIX) and metadata.get(MAGIC_KEY, "") != "three_ds_frictionless"


def card_of(metadata: dict[str, str]) -> dict[str, str]:
    return {"card_fingerprint": metadata.get("sandbox_card_fingerprint", "sbx_fp_4242"),
            "card_bin": metadata.get("sandbox_card_bin", "424242"),
            "card_country": metadata.get("sandbox_card_country", "US")}


def parse_magic(metadata: dict[str, str], *, payer_pays: bool, three_ds: bool = False,
                challenge: str | None = None) -> SandboxOutcome:
    """`three_ds`: the payment needs 3-D Secure; `challenge`: what the payer chose on its step
    ("pass" | "fail"; None through the API, which stands for a payer who passed)."""
    assert challenge in (None, "pass", "fail")
    magic = metadata.get(MAGIC_KEY, "")
    delay_s, copies, failure_code = 0, 1, None if payer_pays else "payer_canceled"
    if three_ds and payer_pays and (challenge == "fail" or magic == "three_ds_fails"):
        failure_code = "authentication_failed"
    elif magic in ("declined", "insufficient_funds") and payer_pays:
        failure_code = "card_declined" if magic == "declined" else "insufficient_funds"
    elif magic == "duplicate_callback":
        copies = 2
    elif magic == "lost_callback":
        copies = 0
    elif (match := _DELAY_RE.match(magic)) is not None:
        delay_s = min(int(match.group(1)), 3600)
    return SandboxOutcome(succeeded=failure_code is None, failure_code=failure_code, delay_s=delay_s, copies=copies)


def renewal_decline(metadata: dict[str, str]) -> str | None:
    """The failure code a renewal charge declines with under the magic values, None if it succeeds."""
    magic = metadata.get(RENEWAL_MAGIC_KEY, "")
    attempt = int(metadata.get(RENEWAL_ATTEMPT_KEY, "1"))
    assert attempt >= 1
    if magic == "declined":
        return "card_declined"
    if magic == "hard_decline":
        return "stolen_card"
    if (match := _DECLINED_N_RE.match(magic)) is not None and attempt <= int(match.group(1)):
        return "card_declined"
    return None


def build_event(*, event_id: str, kind: CallbackKind, created_s: int, payment_id: str, amount: int,
                currency: str, provider_ref: str, failure_code: str | None = None, refund_id: str | None = None,
                card: dict[str, str] | None = None, dispute: SandboxDisputeData | None = None) -> bytes:
    data = SandboxEventData(payment_id=payment_id, amount=amount, currency=currency, provider_ref=provider_ref,
                            failure_code=failure_code, refund_id=refund_id, dispute=dispute, **(card or {}))
    return _encoder.encode(SandboxEvent(id=event_id, type=kind.value, created=created_s, data=data))


def decode_event(body: bytes) -> SandboxEvent:
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise CallbackRejected(f"sandbox callback body is not a sandbox event: {exc}") from None


def to_neutral(event: SandboxEvent) -> CallbackEvent:
    # The sandbox saves every paid payment's method: its own reference is the saved card.
    paid = event.type == CallbackKind.PAYMENT_SUCCEEDED.value and event.data.provider_ref.startswith("sbx_")
    return CallbackEvent(
        event_id=event.id,
        kind=CallbackKind(event.type),
        payment_id=event.data.payment_id,
        provider_ref=event.data.provider_ref,
        amount=event.data.amount,
        currency=event.data.currency,
        failure_code=event.data.failure_code,
        refund_id=event.data.refund_id,
        saved_method_ref=event.data.provider_ref if paid else None,
        card_fingerprint=event.data.card_fingerprint,
        card_bin=event.data.card_bin,
        card_country=event.data.card_country,
        dispute=_dispute_report(event.data.dispute),
    )


def _dispute_report(dispute: SandboxDisputeData | None) -> DisputeReport | None:
    if dispute is None:
        return None
    return DisputeReport(provider_dispute_id=dispute.id, status=dispute.status, reason=dispute.reason,
                         evidence_due_by_s=dispute.evidence_due_by)


# --- statements

STATEMENT_HEADER = ("type", "provider_ref", "payment_id", "amount", "fee", "currency", "occurred_at")
STATEMENT_ROWS_MAX = 500_000
_INTEGER_RE = re.compile(r"^-?[0-9]{1,18}$")
_REF_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def statement_lines(data: bytes) -> list[StatementLine]:
    """Parse a sandbox statement (see the module docstring); ValueError names the bad line."""
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig")))
    header = next(reader, None)
    if header is None or tuple(cell.strip().lower() for cell in header) != STATEMENT_HEADER:
        raise ValueError(f"line 1: the header must be {','.join(STATEMENT_HEADER)}")
    lines: list[StatementLine] = []
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(lines) >= STATEMENT_ROWS_MAX:
            raise ValueError(f"more than {STATEMENT_ROWS_MAX} statement rows")
        try:
            lines.append(_statement_line(row))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    assert len(lines) <= STATEMENT_ROWS_MAX
    return lines


def _statement_line(row: list[str]) -> StatementLine:
    if len(row) != len(STATEMENT_HEADER):
        raise ValueError(f"{len(row)} columns, expected {len(STATEMENT_HEADER)}")
    kind, provider_ref, payment_id, amount_text, fee_text, currency, occurred_at = (cell.strip() for cell in row)
    if kind not in ("payment", "refund"):
        raise ValueError(f"type must be payment or refund, not {kind!r}")
    if not _REF_RE.match(provider_ref):
        raise ValueError("provider_ref must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    if payment_id and not _REF_RE.match(payment_id):
        raise ValueError("payment_id is not an id")
    if not _INTEGER_RE.match(amount_text) or not _INTEGER_RE.match(fee_text):
        raise ValueError("amount and fee are integers in minor units")
    amount, fee = int(amount_text), int(fee_text)
    if (kind == "payment" and amount <= 0) or (kind == "refund" and amount >= 0):
        raise ValueError("a payment amount is positive, a refund amount negative")
    if fee < 0:
        raise ValueError("fee must not be negative")
    if not is_iso_currency(currency):
        raise ValueError(f"currency {currency!r} is not an upper-case ISO 4217 code")
    return StatementLine(provider_ref=provider_ref, kind=kind, amount=amount, fee=fee, currency=currency,
                         occurred_at_s=_timestamp_s(occurred_at), payment_id=payment_id or None)


def _timestamp_s(text: str) -> int:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"occurred_at {text!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())
