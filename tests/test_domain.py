"""Property tests of the pure pieces: the order state machine, exact money formatting, ids, HMAC
signatures with timestamps, and the AES-GCM keyring."""

from __future__ import annotations

import base64
import os
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apss.crypto import Keyring, hmac_sha256_hex, sign_timestamped, verify_timestamped
from apss.domain.money import CURRENCY_EXPONENTS, format_amount
from apss.domain.orders import TRANSITIONS, OrderEvent, OrderStatus, transition
from apss.errors import InvalidTransition
from apss.ids import PREFIXES, new_id

PROPERTY = settings(max_examples=200, deadline=None)
statuses = st.sampled_from(list(OrderStatus))
events = st.sampled_from(list(OrderEvent))


# -- the order state machine ---------------------------------------------------------------------------

def test_every_status_event_pair_is_mapped_or_refused():
    for status in OrderStatus:
        for event in OrderEvent:
            if (status, event) in TRANSITIONS:
                assert transition(status, event) is TRANSITIONS[(status, event)]
            else:
                with pytest.raises(InvalidTransition) as caught:
                    transition(status, event)
                assert caught.value.code == "invalid_state"


def test_transition_table_matches_api_md():
    S, E = OrderStatus, OrderEvent
    assert {(s, e) for (s, e), t in TRANSITIONS.items() if s is S.PENDING} == {
        (S.PENDING, E.PAYMENT_SUCCEEDED), (S.PENDING, E.PAYMENT_FAILED), (S.PENDING, E.EXPIRE), (S.PENDING, E.CANCEL)}
    assert not any(s is S.REFUNDED for s, _ in TRANSITIONS)
    for status in (S.PAID, S.DELIVERING, S.FULFILLED, S.PARTIALLY_REFUNDED):
        assert TRANSITIONS[(status, E.REFUND_FULL)] is S.REFUNDED
        assert TRANSITIONS[(status, E.REFUND_PARTIAL)] is S.PARTIALLY_REFUNDED
    for status in (S.PENDING, S.EXPIRED, S.CANCELED, S.FAILED):
        assert (status, E.REFUND_FULL) not in TRANSITIONS and (status, E.REFUND_PARTIAL) not in TRANSITIONS
    assert TRANSITIONS[(S.PAID, E.START_DELIVERY)] is S.DELIVERING
    assert TRANSITIONS[(S.DELIVERING, E.DELIVER)] is S.FULFILLED
    assert TRANSITIONS[(S.PAID, E.DELIVER)] is S.FULFILLED


@PROPERTY
@given(status=statuses, event=events)
def test_transition_is_the_table_or_invalid_transition(status, event):
    try:
        target = transition(status, event)
    except InvalidTransition:
        assert (status, event) not in TRANSITIONS
    else:
        assert target is TRANSITIONS[(status, event)]
        assert isinstance(target, OrderStatus)


@PROPERTY
@given(sequence=st.lists(events, max_size=40))
def test_random_event_sequences_from_pending(sequence):
    status = OrderStatus.PENDING
    reached_refunded = False
    for event in sequence:
        before = status
        try:
            status = transition(status, event)
        except InvalidTransition:
            assert status is before  # a refusal moves nothing
        assert status in set(OrderStatus)
        if reached_refunded:
            assert status is OrderStatus.REFUNDED
        reached_refunded = reached_refunded or status is OrderStatus.REFUNDED
        if before is OrderStatus.PENDING and status is not OrderStatus.PENDING:
            assert status in (OrderStatus.PAID, OrderStatus.FAILED, OrderStatus.EXPIRED, OrderStatus.CANCELED)


@PROPERTY
@given(event=events)
def test_refunded_is_final(event):
    with pytest.raises(InvalidTransition):
        transition(OrderStatus.REFUNDED, event)


# -- money ---------------------------------------------------------------------------------------------

_AMOUNT_RE = re.compile(r"^(-?)(\d+)(?:\.(\d+))? ([A-Z]{3})$")


def parse_amount(text: str) -> tuple[int, str, int]:
    """Back to (minor units, currency, digits after the point) using integers only."""
    match = _AMOUNT_RE.match(text)
    assert match, text
    sign, major, minor, currency = match.groups()
    digits = len(minor) if minor is not None else 0
    value = int(major) * 10**digits + (int(minor) if minor else 0)
    if major != "0":
        assert not major.startswith("0"), text
    return (-value if sign else value), currency, digits


@pytest.mark.parametrize("exponent", [0, 2, 3])
def test_format_amount_examples(exponent):
    examples = {0: [(0, "0 JPY"), (1, "1 JPY"), (-1500, "-1500 JPY"), (10**15, f"{10**15} JPY")],
                2: [(0, "0.00 USD"), (1, "0.01 USD"), (1999, "19.99 USD"), (-5, "-0.05 USD"), (100, "1.00 USD")],
                3: [(0, "0.000 KWD"), (1, "0.001 KWD"), (1999, "1.999 KWD"), (-1000, "-1.000 KWD")]}
    for amount, text in examples[exponent]:
        currency = text.split()[1]
        assert format_amount(amount, currency) == text


@PROPERTY
@given(amount=st.integers(min_value=-(10**20), max_value=10**20),
       currency=st.sampled_from(sorted(CURRENCY_EXPONENTS)))
def test_format_amount_is_exact(amount, currency):
    text = format_amount(amount, currency)
    value, parsed_currency, digits = parse_amount(text)
    assert (value, parsed_currency, digits) == (amount, currency, CURRENCY_EXPONENTS[currency])
    assert text.startswith("-") == (amount < 0)


def test_exponents_cover_zero_two_and_three():
    assert {CURRENCY_EXPONENTS[c] for c in ("JPY", "KRW", "USD", "EUR", "KWD", "BHD")} == {0, 2, 3}
    assert (CURRENCY_EXPONENTS["JPY"], CURRENCY_EXPONENTS["USD"], CURRENCY_EXPONENTS["KWD"]) == (0, 2, 3)


# -- ids -----------------------------------------------------------------------------------------------

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def decode_crockford(text: str) -> int:
    value = 0
    for char in text:
        value = value * 32 + _CROCKFORD.index(char)
    return value


@PROPERTY
@given(prefix=st.sampled_from(sorted(PREFIXES)))
def test_new_id_shape(prefix):
    before_ms = time.time_ns() // 1_000_000
    value = new_id(prefix)
    after_ms = time.time_ns() // 1_000_000
    head, sep, body = value.partition("_")
    assert (head, sep) == (prefix, "_")
    assert len(body) == 26 and set(body) <= set(_CROCKFORD)
    # 128 bits left-aligned in 130: the last 2 bits are zero padding.
    assert decode_crockford(body) & 0b11 == 0
    # 48 bits of milliseconds (never behind the clock; at most a few ms ahead under heavy same-ms use).
    stamp_ms = decode_crockford(body) >> 2 >> 80
    assert before_ms <= stamp_ms <= after_ms + 1000


def test_new_id_is_strictly_increasing_and_unique():
    ids = [new_id("ord") for _ in range(10_000)]
    assert all(a < b for a, b in zip(ids, ids[1:]))
    assert len(set(ids)) == len(ids)
    bodies = [decode_crockford(i[4:]) >> 2 for i in ids]
    assert all(a < b for a, b in zip(bodies, bodies[1:]))
    assert all(0 <= b < 1 << 128 for b in bodies)


def test_new_id_random_part_is_not_a_counter():
    # Same-millisecond ids add 64 random bits: consecutive differences are not all equal.
    bodies = [decode_crockford(new_id("pay")[4:]) >> 2 for _ in range(50)]
    steps = {b - a for a, b in zip(bodies, bodies[1:])}
    assert len(steps) > 40


def test_new_id_refuses_unknown_prefix():
    with pytest.raises(AssertionError):
        new_id("usr")


# -- signatures ----------------------------------------------------------------------------------------

secrets_st = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=8, max_size=64)
bodies_st = st.binary(min_size=1, max_size=512)
NOW_S = 1_780_000_000


@PROPERTY
@given(secret=secrets_st, body=bodies_st, skew=st.integers(min_value=-300, max_value=300))
def test_signature_round_trip(secret, body, skew):
    header = sign_timestamped(secret=secret, timestamp_s=NOW_S + skew, body=body)
    assert header == f"t={NOW_S + skew},v1={hmac_sha256_hex(secret, str(NOW_S + skew).encode() + b'.' + body)}"
    assert verify_timestamped(secrets_allowed=[secret], header=header, body=body, now_s=NOW_S, tolerance_s=300)


@PROPERTY
@given(secret=secrets_st, body=bodies_st, data=st.data())
def test_any_flipped_body_byte_fails(secret, body, data):
    header = sign_timestamped(secret=secret, timestamp_s=NOW_S, body=body)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    tampered = body[:index] + bytes([body[index] ^ (1 << bit)]) + body[index + 1:]
    assert not verify_timestamped(secrets_allowed=[secret], header=header, body=tampered, now_s=NOW_S, tolerance_s=300)
    # Appended or truncated bodies fail too.
    assert not verify_timestamped(secrets_allowed=[secret], header=header, body=body + b" ", now_s=NOW_S, tolerance_s=300)
    assert not verify_timestamped(secrets_allowed=[secret], header=header, body=body[:-1], now_s=NOW_S, tolerance_s=300)


@PROPERTY
@given(secret=secrets_st, body=bodies_st, outside=st.integers(min_value=301, max_value=10**6),
       sign=st.sampled_from([-1, 1]))
def test_timestamp_outside_tolerance_fails(secret, body, outside, sign):
    header = sign_timestamped(secret=secret, timestamp_s=NOW_S + sign * outside, body=body)
    assert not verify_timestamped(secrets_allowed=[secret], header=header, body=body, now_s=NOW_S, tolerance_s=300)


@PROPERTY
@given(secret=secrets_st, other=secrets_st, body=bodies_st)
def test_wrong_secret_fails(secret, other, body):
    header = sign_timestamped(secret=secret, timestamp_s=NOW_S, body=body)
    if other != secret:
        assert not verify_timestamped(secrets_allowed=[other], header=header, body=body, now_s=NOW_S, tolerance_s=300)
    # The timestamp is signed: moving it breaks the signature.
    moved = header.replace(f"t={NOW_S}", f"t={NOW_S + 1}")
    assert not verify_timestamped(secrets_allowed=[secret], header=moved, body=body, now_s=NOW_S, tolerance_s=300)


@PROPERTY
@given(old=secrets_st, new=secrets_st, body=bodies_st, position=st.integers(min_value=0, max_value=2))
def test_several_v1_values_during_rotation(old, new, body, position):
    signed = str(NOW_S).encode() + b"." + body
    signatures = [hmac_sha256_hex(old, signed), "0" * 64]
    signatures.insert(position, hmac_sha256_hex(new, signed))
    header = f"t={NOW_S}," + ",".join(f"v1={s}" for s in signatures)
    assert verify_timestamped(secrets_allowed=[new], header=header, body=body, now_s=NOW_S, tolerance_s=300)
    assert verify_timestamped(secrets_allowed=[old], header=header, body=body, now_s=NOW_S, tolerance_s=300)
    # Both secrets allowed at once (the receiver rotating): a header signed by either verifies.
    only_old = f"t={NOW_S},v1={hmac_sha256_hex(old, signed)}"
    assert verify_timestamped(secrets_allowed=[new, old], header=only_old, body=body, now_s=NOW_S, tolerance_s=300)
    if old != new:
        only_new = f"t={NOW_S},v1={hmac_sha256_hex(new, signed)}"
        assert not verify_timestamped(secrets_allowed=[old], header=only_new, body=body, now_s=NOW_S, tolerance_s=300)


@pytest.mark.parametrize("header", ["", "garbage", "v1=abc", f"t={NOW_S}", f"t=-{NOW_S},v1=00", "t=١٢٣,v1=00",
                                    f"t={NOW_S},v0=00"])
def test_malformed_signature_headers_fail(header):
    assert not verify_timestamped(secrets_allowed=["whsec_x"], header=header, body=b"{}", now_s=NOW_S, tolerance_s=300)


# -- keyring -------------------------------------------------------------------------------------------

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))


@PROPERTY
@given(plaintext=st.text(max_size=300), context=st.text(min_size=1, max_size=40))
def test_keyring_round_trip_and_context(plaintext, context):
    ring = Keyring({"k1": KEY_1}, primary="k1")
    sealed = ring.seal(plaintext, context=context)
    assert sealed.startswith("k1:")
    assert ring.open(sealed, context=context) == plaintext
    with pytest.raises(ValueError):
        ring.open(sealed, context=context + "x")
    # Nonces are random: sealing twice gives two different values.
    assert ring.seal(plaintext, context=context) != sealed


@PROPERTY
@given(plaintext=st.text(max_size=100), data=st.data())
def test_keyring_tampered_ciphertext_fails(plaintext, data):
    ring = Keyring({"k1": KEY_1}, primary="k1")
    sealed = ring.seal(plaintext, context="row")
    raw = bytearray(base64.b64decode(sealed[3:]))
    index = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[index] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    with pytest.raises(ValueError):
        ring.open("k1:" + base64.b64encode(bytes(raw)).decode(), context="row")


def test_keyring_rotation_and_unknown_key_id():
    old = Keyring({"k1": KEY_1}, primary="k1")
    sealed_old = old.seal("secret", context="mch_1")
    rotated = Keyring({"k1": KEY_1, "k2": KEY_2}, primary="k2")
    assert rotated.open(sealed_old, context="mch_1") == "secret"
    sealed_new = rotated.seal("secret", context="mch_1")
    assert sealed_new.startswith("k2:")
    with pytest.raises(KeyError):
        old.open(sealed_new, context="mch_1")
    # A key id that is known but is the wrong key does not open it either.
    imposter = Keyring({"k2": KEY_1}, primary="k2")
    with pytest.raises(ValueError):
        imposter.open(sealed_new, context="mch_1")


def test_keyring_repr_shows_no_key_material():
    key = os.urandom(32)
    ring = Keyring({"k1": key, "k2": KEY_2}, primary="k1")
    text = repr(ring) + str(ring)
    assert text == "Keyring(ids=['k1', 'k2'], primary='k1')" * 2
    for material in (key, KEY_2):
        for encoded in (material.hex(), base64.b64encode(material).decode(), repr(material)):
            assert encoded not in text


def test_rfc3339_formatting_matches_datetime_on_seeded_times():
    """format_rfc3339 caches per second: its text must be datetime's for any millisecond."""
    import random
    from datetime import datetime, timezone

    from apss.clock import format_rfc3339, parse_rfc3339

    rng = random.Random(3339)
    for ms in [0, 999, 1000, 951_782_400_000, *(rng.randrange(0, 4_102_444_800_000) for _ in range(5000))]:
        text = format_rfc3339(ms)
        assert text == datetime.fromtimestamp(ms // 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), ms
        assert parse_rfc3339(text) == ms // 1000 * 1000
