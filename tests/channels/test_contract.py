"""The contract every payment channel passes (the sandbox first): create a payment, verify a
signed callback into exactly one neutral event, refuse tampered and stale ones, reply as the
provider expects. Each channel's harness wires it to a local stand-in of its provider."""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
import time

import pytest

from apss.channels.base import (
    CAPABILITY_PROTOCOLS,
    Channel,
    PaymentCreated,
    PaymentRequest,
    capabilities_of,
)
from apss.domain.payments import CallbackKind
from apss.errors import CallbackRejected
from apss.ids import new_id

pytestmark = pytest.mark.anyio
CHANNELS = ["sandbox", "stripe", "paypal", "alipay", "wechatpay", "pix"]


@pytest.fixture(params=CHANNELS)
async def harness(request):
    module = importlib.import_module(f"tests.channels.harness_{request.param}")
    made = module.make_harness()
    yield made
    await made.aclose()


def _request(harness, amount: int) -> PaymentRequest:
    payment_id = new_id("pay")
    return PaymentRequest(payment_id=payment_id, order_id=new_id("ord"), merchant_id=new_id("mch"), amount=amount,
                          currency=harness.currency, description="Order: sword x1",
                          callback_url=f"https://apss.example.test/v1/channels/{harness.channel.name}/webhook/mch_1",
                          return_url="https://game.example.test/done", player_id="player-1", metadata={})


async def test_channel_is_a_channel(harness):
    assert isinstance(harness.channel, Channel)
    assert harness.channel.name in CHANNELS
    for value in harness.credentials.values():
        if len(value) >= 12:
            assert value not in repr(harness.channel), "credentials never appear in a repr"


async def test_create_payment_and_verify_callbacks(harness):
    request = _request(harness, 1999 if harness.currency != "JPY" else 100)
    created = await harness.channel.create_payment(request, harness.credentials)
    assert isinstance(created, PaymentCreated) and created.provider_ref
    assert created.next_action is not None and created.next_action.type in ("redirect", "qr_code", "client_secret")
    now_s = int(time.time())
    for succeeded in (True, False):
        event_id = f"evt_contract_{succeeded}_{new_id('evt')}"
        callback = await harness.signed_callback(succeeded=succeeded, payment_id=request.payment_id,
                                                 provider_ref=created.provider_ref, amount=request.amount,
                                                 currency=request.currency, event_id=event_id, now_s=now_s)
        events = await harness.channel.verify_callback(callback, harness.credentials)
        if not succeeded and not events:
            continue  # a provider that sends no failure callbacks (documented in its harness)
        assert len(events) == 1, events
        event = events[0]
        assert event.kind is (CallbackKind.PAYMENT_SUCCEEDED if succeeded else CallbackKind.PAYMENT_FAILED)
        assert event.payment_id == request.payment_id
        assert event.event_id
        if succeeded:
            assert (event.amount, event.currency) == (request.amount, request.currency)
        with pytest.raises(CallbackRejected):
            await harness.channel.verify_callback(harness.tamper(callback), harness.credentials)
        stale = harness.stale(callback)
        if stale is not None:
            with pytest.raises(CallbackRejected):
                await harness.channel.verify_callback(stale, harness.credentials)
    reply = harness.channel.callback_reply(accepted=True)
    assert 200 <= reply.status_code < 300


# -- capabilities: what each adapter says it can do is what it does ----------------------------

EXPECTED_CAPABILITIES = {
    "sandbox": {"create_payment", "create_payment_locally", "verify_callback", "refund", "query_status", "query_refund",
                "parse_statement", "cancel_payment", "charge_saved_method", "submit_dispute_evidence"},
    "stripe": {"create_payment", "verify_callback", "refund", "query_status", "query_refund", "parse_statement",
               "cancel_payment", "charge_saved_method", "submit_dispute_evidence"},
    "paypal": {"create_payment", "verify_callback", "refund", "capture", "query_status", "query_refund",
               "parse_statement"},
    "alipay": {"create_payment", "verify_callback", "refund", "query_status", "query_refund", "parse_statement",
               "cancel_payment"},
    "wechatpay": {"create_payment", "verify_callback", "refund", "query_status", "query_refund", "parse_statement",
                  "cancel_payment"},
    "pix": {"create_payment", "verify_callback", "refund", "query_status", "query_refund", "cancel_payment"},
    # App stores: the store's own app takes the payment (no create_payment, no callbacks).
    "apple": {"verify_store_purchase", "parse_statement"},
    "google": {"verify_store_purchase", "acknowledge_store_purchase", "parse_statement"},
}


def _capability_methods() -> set[str]:
    names = set()
    for protocol in CAPABILITY_PROTOCOLS.values():
        names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return names


def _is_stub(function) -> bool:
    """A method whose body (after its docstring) is a lone `raise`: a capability it does not have."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    body = tree.body[0].body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return len(body) == 1 and isinstance(body[0], ast.Raise)


async def test_no_adapter_defines_a_capability_method_it_does_not_support(harness):
    channel_class = type(harness.channel)
    stubs = [name for name in sorted(_capability_methods())
             if name in vars(channel_class) and _is_stub(vars(channel_class)[name])]
    assert stubs == [], f"{channel_class.__name__} declares {stubs} only to refuse them: leave the method out"


async def test_capabilities_of_says_the_truth(harness):
    declared = {c.value for c in capabilities_of(harness.channel)}
    assert declared == EXPECTED_CAPABILITIES[harness.channel.name]


async def test_each_declared_query_and_close_answers_in_neutral_terms(harness):
    """Against each stand-in: a fresh payment queried (QueriesStatus) and closed (CancelsPayments)."""
    from apss.channels.base import Capability, PaymentQuery, PaymentReport
    from apss.domain.payments import PaymentStatus

    channel = harness.channel
    declared = capabilities_of(channel)
    request = _request(harness, 1999 if harness.currency != "JPY" else 100)
    created = await channel.create_payment(request, harness.credentials)
    query = PaymentQuery(payment_id=request.payment_id, provider_ref=created.provider_ref, amount=request.amount,
                         currency=request.currency)
    if Capability.QUERY_STATUS in declared:
        report = await channel.query_payment(query, harness.credentials)
        assert isinstance(report, PaymentReport) and report.status in (PaymentStatus.REQUIRES_ACTION, PaymentStatus.UNKNOWN)
    if Capability.CANCEL_PAYMENT in declared:
        assert await channel.cancel_payment(query, harness.credentials) is None
        assert await channel.cancel_payment(query, harness.credentials) is None, "closing a closed payment is a success"
    else:
        assert not hasattr(channel, "cancel_payment")


def _store_channels() -> list[Channel]:
    import httpx

    from apss.channels.apple import AppleChannel
    from apss.channels.google import GoogleChannel
    from apss.clock import SystemClock
    return [AppleChannel(clock=SystemClock()), GoogleChannel(http=httpx.AsyncClient(), clock=SystemClock())]


async def test_store_channels_say_the_truth_and_have_no_stubs():
    for channel in _store_channels():
        assert isinstance(channel, Channel)
        assert {c.value for c in capabilities_of(channel)} == EXPECTED_CAPABILITIES[channel.name]
        stubs = [name for name in sorted(_capability_methods())
                 if name in vars(type(channel)) and _is_stub(vars(type(channel))[name])]
        assert stubs == [], channel.name
