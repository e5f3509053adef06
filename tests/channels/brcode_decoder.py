"""A BR Code (EMV MPM) decoder written for the tests, independent of apss.channels.pix.brcode:
TLV parsing by hand and the CRC by the standard library's binascii.crc_hqx (CRC-CCITT, poly
0x1021, here with init 0xFFFF)."""

from __future__ import annotations

import binascii

__all__ = ["decode", "tlv"]

_TEMPLATES = {"26", "62"}  # fields whose value is itself TLV (merchant account, additional data)


def tlv(text: str) -> dict[str, str]:
    """One level of id(2) length(2) value fields; AssertionError on any malformation."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(text):
        tag, length = text[position:position + 2], text[position + 2:position + 4]
        assert tag.isdigit() and length.isdigit(), (text, position)
        value = text[position + 4:position + 4 + int(length)]
        assert len(value) == int(length) > 0, (tag, length)
        assert tag not in fields, f"field {tag} twice"
        fields[tag] = value
        position += 4 + int(length)
    return fields


def decode(code: str) -> dict[str, object]:
    """The fields of a BR Code, templates decoded one level; the CRC must check."""
    assert code.isascii()
    assert code[-8:-4] == "6304", "the CRC is the last field"
    expected = f"{binascii.crc_hqx(code[:-4].encode('ascii'), 0xFFFF):04X}"
    assert code[-4:] == expected, (code[-4:], expected)
    fields: dict[str, object] = dict(tlv(code))
    for tag in _TEMPLATES & set(fields):
        fields[tag] = tlv(str(fields[tag]))
    assert list(fields)[0] == "00" and fields["00"] == "01", "payload format indicator first"
    return fields
