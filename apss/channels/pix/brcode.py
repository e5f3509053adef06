"""The BR Code: the EMV QR Code (Merchant-Presented Mode) payload of a PIX charge, "copia e cola".

A string of TLV fields, each a two-digit id, a two-digit length and the value (lengths count
characters; the payload is ASCII), in this order:

    00 "01"                       payload format indicator
    01 "12"                       point of initiation: a dynamic code, used once (only with a URL)
    26 merchant account           00 "br.gov.bcb.pix", then 01 the PIX key (static) or
                                  25 the charge's location URL without its scheme (dynamic)
    52 "0000"                     merchant category code
    53 "986"                      currency: BRL
    54 amount                     "12.34", optional
    58 "BR"                       country
    59 merchant name              <= 25 characters
    60 merchant city              <= 15 characters
    62 additional data            05 the txid ("***" when there is none: dynamic codes carry it in
                                  the payload the location serves)
    63 CRC                        CRC16-CCITT (poly 0x1021, init 0xFFFF) over everything before
                                  it including "6304", four upper-case hex digits

The field layout is the central bank's "Manual de Padrões para Iniciação do Pix"; its published
examples are reproduced by tests/channels/test_pix_brcode.py.
"""

from __future__ import annotations

import re

__all__ = [
    "CITY_CHARS_MAX",
    "NAME_CHARS_MAX",
    "amount_text",
    "build",
    "crc16",
]

GUI = "br.gov.bcb.pix"
NAME_CHARS_MAX = 25
CITY_CHARS_MAX = 15
_KEY_CHARS_MAX = 77  # the longest DICT key (an e-mail address)
_URL_CHARS_MAX = 77  # field 26 holds at most 99 characters: 18 go to the GUI subfield
_TXID_RE = re.compile(r"^(\*\*\*|[A-Za-z0-9]{1,25})$")  # field 62/05 holds at most 25 characters
_AMOUNT_RE = re.compile(r"^\d{1,10}\.\d{2}$")
_FIELD_CHARS_MAX = 99


def crc16(data: bytes) -> str:
    """CRC16-CCITT (the "FALSE" variant: poly 0x1021, init 0xFFFF, no reflection, no final XOR)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    assert 0 <= crc <= 0xFFFF
    return f"{crc:04X}"


def amount_text(centavos: int) -> str:
    """Integer centavos -> "12.34" (the PIX API's and the BR Code's amount), never via float."""
    assert isinstance(centavos, int) and centavos > 0, centavos
    text = f"{centavos // 100}.{centavos % 100:02d}"
    assert _AMOUNT_RE.match(text), text
    return text


def _field(tag: str, value: str) -> str:
    assert len(tag) == 2 and tag.isdigit(), tag
    assert 0 < len(value) <= _FIELD_CHARS_MAX, (tag, len(value))
    return f"{tag}{len(value):02d}{value}"


def _ascii(value: str, name: str, chars_max: int) -> str:
    if not value or len(value) > chars_max or not value.isascii() or not value.isprintable():
        raise ValueError(f"the BR Code's {name} must be 1 to {chars_max} printable ASCII characters")
    return value


def build(*, merchant_name: str, merchant_city: str, key: str | None = None, location: str | None = None,
          amount: int | None = None, txid: str | None = None) -> str:
    """A BR Code: static with the PIX `key`, or dynamic with the charge's `location` (exactly one).

    `amount` is in centavos (None: the payer types it; static codes only, in practice). ValueError
    for a field that does not fit the standard."""
    if (key is None) == (location is None):
        raise ValueError("a BR Code names either a PIX key (static) or a location (dynamic)")
    if location is not None:
        location = location.removeprefix("https://")
        account = _field("00", GUI) + _field("25", _ascii(location, "location", _URL_CHARS_MAX))
    else:
        assert key is not None
        account = _field("00", GUI) + _field("01", _ascii(key, "key", _KEY_CHARS_MAX))
    txid = txid or "***"
    if not _TXID_RE.match(txid):
        raise ValueError("the BR Code's txid must be 1 to 25 letters and digits, or ***")
    payload = _field("00", "01")
    if location is not None:
        payload += _field("01", "12")
    payload += _field("26", account) + _field("52", "0000") + _field("53", "986")
    if amount is not None:
        payload += _field("54", amount_text(amount))
    payload += _field("58", "BR") + _field("59", _ascii(merchant_name, "merchant name", NAME_CHARS_MAX))
    payload += _field("60", _ascii(merchant_city, "merchant city", CITY_CHARS_MAX))
    payload += _field("62", _field("05", txid)) + "6304"
    code = payload + crc16(payload.encode("ascii"))
    assert code.isascii() and len(code) <= 512, len(code)
    return code
