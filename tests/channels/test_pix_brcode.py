"""The BR Code generator against the central bank's published examples and the tests' own decoder.

The examples are those of the Banco Central do Brasil's "Manual de Padrões para Iniciação do Pix"
(section 2.7, examples of a static and of a dynamic QR code; the same strings are quoted by many
PIX libraries' tests): key 123e4567-e12b-12d1-a456-426655440000 / location
pix.example.com/8b3da2f39a4140d1a91abd93113bd441, "Fulano de Tal", "BRASILIA".
"""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apss.channels.pix import brcode
from tests.channels.brcode_decoder import decode

MANUAL_STATIC = ("00020126580014br.gov.bcb.pix0136123e4567-e12b-12d1-a456-426655440000"
                 "5204000053039865802BR5913Fulano de Tal6008BRASILIA62070503***63041D3D")
MANUAL_DYNAMIC = ("00020101021226700014br.gov.bcb.pix2548pix.example.com/8b3da2f39a4140d1a91abd93113bd441"
                  "5204000053039865802BR5913Fulano de Tal6008BRASILIA62070503***630464E4")


def test_reproduces_the_manuals_static_example() -> None:
    code = brcode.build(merchant_name="Fulano de Tal", merchant_city="BRASILIA",
                        key="123e4567-e12b-12d1-a456-426655440000")
    assert code == MANUAL_STATIC


def test_reproduces_the_manuals_dynamic_example() -> None:
    code = brcode.build(merchant_name="Fulano de Tal", merchant_city="BRASILIA",
                        location="pix.example.com/8b3da2f39a4140d1a91abd93113bd441")
    assert code == MANUAL_DYNAMIC
    # A location given with its scheme goes in without it (the manual's field 26/25).
    assert brcode.build(merchant_name="Fulano de Tal", merchant_city="BRASILIA",
                        location="https://pix.example.com/8b3da2f39a4140d1a91abd93113bd441") == MANUAL_DYNAMIC


def test_the_decoder_reads_the_manuals_examples() -> None:
    static, dynamic = decode(MANUAL_STATIC), decode(MANUAL_DYNAMIC)
    assert static["26"] == {"00": "br.gov.bcb.pix", "01": "123e4567-e12b-12d1-a456-426655440000"}
    assert "01" not in static and "54" not in static
    assert dynamic["01"] == "12"
    assert dynamic["26"] == {"00": "br.gov.bcb.pix", "25": "pix.example.com/8b3da2f39a4140d1a91abd93113bd441"}
    for fields in (static, dynamic):
        assert (fields["52"], fields["53"], fields["58"], fields["59"], fields["60"]) == (
            "0000", "986", "BR", "Fulano de Tal", "BRASILIA")
        assert fields["62"] == {"05": "***"}


def test_crc_is_ccitt_false_with_the_check_value() -> None:
    assert brcode.crc16(b"123456789") == "29B1"  # CRC-16/CCITT-FALSE's catalogued check value
    assert brcode.crc16(b"") == "FFFF"
    with pytest.raises(AssertionError):
        decode(MANUAL_STATIC[:-1] + "E")  # one wrong CRC digit


@given(centavos=st.integers(min_value=1, max_value=9_999_999_999_99),
       name=st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=25),
       city=st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=15),
       txid=st.one_of(st.none(), st.text("abcXYZ0189", min_size=1, max_size=25)),
       dynamic=st.booleans())
def test_every_code_decodes_with_its_fields_and_crc(centavos: int, name: str, city: str, txid: str | None,
                                                    dynamic: bool) -> None:
    where = {"location": "psp.example.com/qr/v2/" + "a" * 32} if dynamic else {"key": "+5561999998888"}
    code = brcode.build(merchant_name=name, merchant_city=city, amount=centavos, txid=txid, **where)
    fields = decode(code)
    assert fields["54"] == f"{centavos // 100}.{centavos % 100:02d}"
    assert (fields["59"], fields["60"]) == (name, city)
    assert fields["62"] == {"05": txid or "***"}
    assert fields["26"]["00"] == "br.gov.bcb.pix"
    assert ("25" in fields["26"]) is dynamic and (fields.get("01") == "12") is dynamic
    assert f"{binascii.crc_hqx(code[:-4].encode(), 0xFFFF):04X}" == code[-4:]


def test_amount_text_is_exact_for_integer_centavos() -> None:
    assert [brcode.amount_text(c) for c in (1, 10, 100, 1234, 100000, 123456789012)] == [
        "0.01", "0.10", "1.00", "12.34", "1000.00", "1234567890.12"]
    with pytest.raises(AssertionError):
        brcode.amount_text(0)


@pytest.mark.parametrize(("fields", "message"), [
    ({"merchant_name": "N" * 26, "merchant_city": "C", "key": "k"}, "merchant name"),
    ({"merchant_name": "N", "merchant_city": "C" * 16, "key": "k"}, "merchant city"),
    ({"merchant_name": "São Paulo", "merchant_city": "C", "key": "k"}, "merchant name"),
    ({"merchant_name": "N", "merchant_city": "C"}, "either"),
    ({"merchant_name": "N", "merchant_city": "C", "key": "k", "location": "l"}, "either"),
    ({"merchant_name": "N", "merchant_city": "C", "key": "k", "txid": "pay_1"}, "txid"),
    ({"merchant_name": "N", "merchant_city": "C", "key": "k", "txid": "a" * 26}, "txid"),
    ({"merchant_name": "N", "merchant_city": "C", "location": "x" * 78}, "location"),
])
def test_fields_that_do_not_fit_the_standard_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        brcode.build(**fields)
