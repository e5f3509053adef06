"""The PIX channel against its stand-in: the charge's wire shape, OAuth2, the BR Code, callbacks
confirmed by query, returns, errors, secrets, and mTLS over a real TLS connection."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from apss.channels.base import (
    CallbackRequest,
    PaymentQuery,
    PaymentRequest,
    RefundQuery,
    RefundRequest,
)
from apss.channels.pix import PixChannel, mapping
from apss.clock import TestClock
from apss.domain.payments import CallbackKind, PaymentStatus
from apss.errors import (
    CallbackRejected,
    ChannelUnavailable,
    ChannelUnreachable,
    CurrencyNotSupported,
    ProviderDeclined,
)
from tests.channels import harness_pix as hp
from tests.channels.brcode_decoder import decode
from tests.channels.standin_pix import PixStandIn, e2eid
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.anyio
NOW_S = 1_764_083_045
PAYMENT_ID = "pay_06h3qn8fc80a5pap6g5r4hck5w"
TXID = "pay06h3qn8fc80a5pap6g5r4hck5w"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def harness() -> AsyncIterator[hp.Harness]:
    h = hp.make_harness()
    h.channel._clock = TestClock(NOW_S * 1000)
    yield h
    await h.aclose()


def _payment(amount: int = 1999, currency: str = "BRL", payment_id: str = PAYMENT_ID,
             ttl_s: int | None = 900) -> PaymentRequest:
    return PaymentRequest(payment_id=payment_id, order_id="ord_06h3qn8fc80a5pap6g5r4hck50", merchant_id="mch_1",
                          amount=amount, currency=currency, description="Pacote de gemas x10",
                          callback_url="https://apss.test/v1/channels/pix/webhook/mch_1",
                          expires_at_s=NOW_S + ttl_s if ttl_s else None)


def _notice(standin: PixStandIn, entry: dict) -> CallbackRequest:
    return CallbackRequest(headers={}, body=standin.notice(entry), now_s=NOW_S)


def _calls(standin: PixStandIn) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in standin.requests]


# ---- charges ----


async def test_the_charge_is_put_with_the_reservation_the_amount_as_text_and_the_key(harness: hp.Harness) -> None:
    created = await harness.channel.create_payment(_payment(amount=1999, ttl_s=900), harness.credentials)
    assert created.provider_ref == TXID and created.status is PaymentStatus.REQUIRES_ACTION
    put = next(r for r in harness.standin.requests if r.method == "PUT" and r.path.startswith("/cob/"))
    assert put.path == f"/cob/{TXID}"
    assert json.loads(put.body) == {"calendario": {"expiracao": 900}, "valor": {"original": "19.99"},
                                    "chave": hp.CHAVE, "solicitacaoPagador": "Pacote de gemas x10"}
    assert put.headers["authorization"].startswith("Bearer ")
    assert harness.standin.webhooks == {hp.CHAVE: "https://apss.test/v1/channels/pix/webhook/mch_1"}
    # The payer's code is the PSP's pixCopiaECola, exactly.
    assert created.next_action.type == "qr_code"
    assert created.next_action.data == harness.standin.cobs[TXID]["pixCopiaECola"]
    assert decode(created.next_action.data)["54"] == "19.99"


@pytest.mark.parametrize(("amount", "text"), [(1, "0.01"), (100, "1.00"), (123456789, "1234567.89")])
async def test_amounts_are_exact_strings_of_centavos(harness: hp.Harness, amount: int, text: str) -> None:
    await harness.channel.create_payment(_payment(amount=amount), harness.credentials)
    assert harness.standin.cobs[TXID]["valor"]["original"] == text


async def test_without_pix_copia_e_cola_apss_builds_the_br_code_from_the_location() -> None:
    harness = hp.make_harness(copia_e_cola=False)
    try:
        created = await harness.channel.create_payment(_payment(amount=4250), harness.credentials)
        cob = harness.standin.cobs[TXID]
        assert "pixCopiaECola" not in cob
        fields = decode(created.next_action.data)
        assert fields["01"] == "12"
        assert fields["26"] == {"00": "br.gov.bcb.pix", "25": cob["location"]}
        assert (fields["53"], fields["54"], fields["58"]) == ("986", "42.50", "BR")
        assert (fields["59"], fields["60"]) == ("Estudio de Jogos", "SAO PAULO")
        assert fields["62"] == {"05": "***"}
    finally:
        await harness.aclose()


async def test_only_brl_is_taken(harness: hp.Harness) -> None:
    with pytest.raises(CurrencyNotSupported, match="BRL"):
        await harness.channel.create_payment(_payment(currency="USD"), harness.credentials)
    assert harness.standin.requests == []


async def test_the_token_is_fetched_once_and_again_after_the_psp_revokes_it(harness: hp.Harness) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=TXID, amount=1999, currency="BRL")
    await harness.channel.query_payment(query, harness.credentials)
    assert [c for c in _calls(harness.standin) if c[1] == "/oauth/token"] == [("POST", "/oauth/token")]
    token_request = harness.standin.requests[0]
    assert token_request.headers["authorization"].startswith("Basic ")
    assert b"grant_type=client_credentials" in token_request.body
    harness.standin.revoke_tokens()
    report = await harness.channel.query_payment(query, harness.credentials)
    assert report.status is PaymentStatus.REQUIRES_ACTION
    assert _calls(harness.standin)[-3:] == [("GET", f"/cob/{TXID}"), ("POST", "/oauth/token"), ("GET", f"/cob/{TXID}")]


async def test_wrong_client_secret_is_a_definite_refusal(harness: hp.Harness) -> None:
    with pytest.raises(ProviderDeclined) as refused:
        await harness.channel.create_payment(_payment(), {**harness.credentials, "client_secret": "wrong-secret-1"})
    assert refused.value.provider_code == "invalid_client"
    assert "wrong-secret-1" not in str(refused.value)


async def test_psp_problems_map_to_their_type(harness: hp.Harness) -> None:
    with pytest.raises(ProviderDeclined) as refused:
        await harness.channel.create_payment(_payment(), {**harness.credentials, "chave": "outra-chave@example.com"})
    assert refused.value.provider_code == "CobOperacaoInvalida"
    harness.standin.fail_next = (503, "ServicoIndisponivel")
    with pytest.raises(ChannelUnavailable) as unavailable:
        await harness.channel.query_payment(PaymentQuery(payment_id=PAYMENT_ID, provider_ref=TXID, amount=1,
                                                         currency="BRL"), harness.credentials)
    assert not isinstance(unavailable.value, ProviderDeclined)
    with pytest.raises(ProviderDeclined) as missing:
        await harness.channel.query_payment(PaymentQuery(payment_id=PAYMENT_ID, provider_ref=TXID, amount=1,
                                                         currency="BRL"), harness.credentials)
    assert missing.value.provider_code == "CobNaoEncontrado"


async def test_unreachable_psp(harness: hp.Harness) -> None:
    channel = PixChannel(public_url="http://apss.test", http=httpx.AsyncClient(timeout=2))
    credentials = {**harness.credentials, "api_base": f"http://127.0.0.1:{free_port()}/api/v2"}
    with pytest.raises(ChannelUnreachable):
        await channel.create_payment(_payment(), credentials)


@pytest.mark.parametrize(("status", "neutral"), [
    ("ATIVA", PaymentStatus.REQUIRES_ACTION), ("CONCLUIDA", PaymentStatus.UNKNOWN),
    ("REMOVIDA_PELO_USUARIO_RECEBEDOR", PaymentStatus.CANCELED), ("REMOVIDA_PELO_PSP", PaymentStatus.CANCELED),
    ("EM_ANALISE", PaymentStatus.UNKNOWN),
])
async def test_query_maps_every_status(harness: hp.Harness, status: str, neutral: PaymentStatus) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    harness.standin.cobs[TXID]["status"] = status  # CONCLUIDA without its pix: not known yet
    report = await harness.channel.query_payment(PaymentQuery(payment_id=PAYMENT_ID, provider_ref=TXID, amount=1999,
                                                              currency="BRL"), harness.credentials)
    assert report.status is neutral
    assert report.failure_code == (status if neutral is PaymentStatus.CANCELED else None)


async def test_query_of_a_paid_charge_reports_the_pix(harness: hp.Harness) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    entry = harness.standin.pay(TXID)
    report = await harness.channel.query_payment(PaymentQuery(payment_id=PAYMENT_ID, provider_ref=TXID, amount=1999,
                                                              currency="BRL"), harness.credentials)
    assert (report.status, report.amount, report.currency, report.provider_refs) == (
        PaymentStatus.SUCCEEDED, 1999, "BRL", [entry["endToEndId"]])


async def test_cancel_removes_an_active_charge_and_refuses_a_paid_one(harness: hp.Harness) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=TXID, amount=1999, currency="BRL")
    await harness.channel.cancel_payment(query, harness.credentials)
    assert harness.standin.cobs[TXID]["status"] == "REMOVIDA_PELO_USUARIO_RECEBEDOR"
    await harness.channel.cancel_payment(query, harness.credentials)
    other = "pay_06h3qn8fc80a5pap6g5r4hck6w"
    await harness.channel.create_payment(_payment(payment_id=other), harness.credentials)
    harness.standin.pay(mapping.txid_for(other))
    with pytest.raises(ProviderDeclined):
        await harness.channel.cancel_payment(PaymentQuery(payment_id=other, provider_ref=mapping.txid_for(other),
                                                          amount=1999, currency="BRL"), harness.credentials)


# ---- callbacks: never trusted without the query ----


async def test_a_paid_charges_notice_is_one_payment_event_with_the_psps_amount(harness: hp.Harness) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    entry = harness.standin.pay(TXID)
    events = await harness.channel.verify_callback(_notice(harness.standin, entry), harness.credentials)
    assert [(e.event_id, e.kind, e.payment_id, e.provider_ref, e.amount, e.currency, e.provider_refs)
            for e in events] == [(entry["endToEndId"], CallbackKind.PAYMENT_SUCCEEDED, PAYMENT_ID, TXID, 1999, "BRL",
                                  [entry["endToEndId"]])]
    assert _calls(harness.standin)[-1] == ("GET", f"/cob/{TXID}")


async def test_a_notice_for_an_unpaid_charge_yields_nothing(harness: hp.Harness) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    forged = {"endToEndId": e2eid(), "txid": TXID, "valor": "19.99", "horario": "2026-11-25T15:04:05.000Z"}
    assert await harness.channel.verify_callback(_notice(harness.standin, forged), harness.credentials) == []
    assert harness.standin.cobs[TXID]["status"] == "ATIVA"


@pytest.mark.parametrize("change", ["valor", "endToEndId", "txid_unknown", "txid_foreign", "e2eid_shape"])
async def test_notices_the_psp_contradicts_are_rejected(harness: hp.Harness, change: str) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    entry = dict(harness.standin.pay(TXID))
    if change == "valor":
        entry["valor"] = "1999.00"
    elif change == "endToEndId":
        entry["endToEndId"] = e2eid()
    elif change == "txid_unknown":
        entry["txid"] = "pay06h3qn8fc80a5pap6g5r4hcXXX"
    elif change == "txid_foreign":
        entry["txid"] = "fc9a4366ff3d4964b5dbc6c91a8722d3"
    else:
        entry["endToEndId"] = "E123"
    with pytest.raises(CallbackRejected):
        await harness.channel.verify_callback(_notice(harness.standin, entry), harness.credentials)


@pytest.mark.parametrize("body", [b"", b"{}", b'{"pix": {}}', b'{"pix": [{"txid": "x"}]}', b"\xff",
                                  json.dumps({"pix": [{"endToEndId": "E", "valor": "1.00", "horario": "h",
                                                       "txid": "t"}] * 101}).encode()])
async def test_malformed_notices_are_rejected_before_any_query(harness: hp.Harness, body: bytes) -> None:
    with pytest.raises(CallbackRejected):
        await harness.channel.verify_callback(CallbackRequest(headers={}, body=body, now_s=NOW_S), harness.credentials)
    assert harness.standin.requests == []


async def test_a_pix_without_txid_is_not_ours(harness: hp.Harness) -> None:
    entry = {"endToEndId": e2eid(), "valor": "5.00", "horario": "2026-11-25T15:04:05.000Z"}
    assert await harness.channel.verify_callback(_notice(harness.standin, entry), harness.credentials) == []


def test_callback_reply() -> None:
    channel = PixChannel(public_url="http://apss.test", http=httpx.AsyncClient())
    assert channel.callback_reply(accepted=True).status_code == 200
    assert channel.callback_reply(accepted=False).status_code == 400


# ---- returns (devolucao) ----


def _refund(amount: int, refund_id: str = "rfd_06h3qn8fc80a701zmjxp8w1pzg") -> RefundRequest:
    return RefundRequest(refund_id=refund_id, payment_id=PAYMENT_ID, provider_ref=TXID, amount=amount, currency="BRL",
                         reason="Pedido do jogador")


async def test_a_partial_return_on_the_pix_that_paid(harness: hp.Harness) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    entry = harness.standin.pay(TXID)
    result = await harness.channel.refund(_refund(500), harness.credentials)
    put = harness.standin.requests[-1]
    assert (put.method, put.path) == ("PUT", f"/pix/{entry['endToEndId']}/devolucao/rfd06h3qn8fc80a701zmjxp8w1pzg")
    assert json.loads(put.body) == {"valor": "5.00", "natureza": "ORIGINAL", "descricao": "Pedido do jogador"}
    returned = harness.standin.returns()
    assert [(r["id"], r["valor"]) for r in returned] == [("rfd06h3qn8fc80a701zmjxp8w1pzg", "5.00")]
    assert (result.status, result.provider_refund_ref) == ("pending", returned[0]["rtrId"])
    # The same refund asked again (a lost answer) finds the first: the spec refuses a reused id.
    again = await harness.channel.refund(_refund(500), harness.credentials)
    assert again.provider_refund_ref == result.provider_refund_ref and len(harness.standin.returns()) == 1
    query = RefundQuery(refund_id="rfd_06h3qn8fc80a701zmjxp8w1pzg", payment_id=PAYMENT_ID, provider_ref=TXID,
                        provider_refund_ref=result.provider_refund_ref, amount=500, currency="BRL")
    harness.standin.settle_return(entry["endToEndId"], returned[0]["id"], "DEVOLVIDO")
    assert (await harness.channel.query_refund(query, harness.credentials)).status == "succeeded"
    # The PSP calls back when a return ends: the charge's confirmed record yields the refund event.
    events = await harness.channel.verify_callback(_notice(harness.standin, entry), harness.credentials)
    assert [(e.kind, e.refund_id, e.provider_refund_ref, e.amount) for e in events] == [
        (CallbackKind.PAYMENT_SUCCEEDED, None, None, 1999),
        (CallbackKind.REFUND_SUCCEEDED, "rfd_06h3qn8fc80a701zmjxp8w1pzg", result.provider_refund_ref, 500)]


async def test_returns_beyond_the_pix_and_on_unpaid_charges_are_refused(harness: hp.Harness) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    with pytest.raises(ProviderDeclined):
        await harness.channel.refund(_refund(500), harness.credentials)
    harness.standin.pay(TXID)
    await harness.channel.refund(_refund(1500), harness.credentials)
    with pytest.raises(ProviderDeclined) as refused:
        await harness.channel.refund(_refund(500, refund_id="rfd_06h3qn8fc80a701zmjxp8w1pz2"), harness.credentials)
    assert refused.value.provider_code == "PixDevolucaoInvalida"
    missing = RefundQuery(refund_id="rfd_06h3qn8fc80a701zmjxp8w1pz3", payment_id=PAYMENT_ID, provider_ref=TXID,
                          provider_refund_ref=None, amount=1, currency="BRL")
    result = await harness.channel.query_refund(missing, harness.credentials)
    assert (result.status, result.failure_code) == ("failed", "refund_not_found")


@pytest.mark.parametrize(("status", "neutral"), [("EM_PROCESSAMENTO", "pending"), ("DEVOLVIDO", "succeeded"),
                                                 ("NAO_REALIZADO", "failed"), ("OUTRO", "pending")])
def test_return_statuses(status: str, neutral: str) -> None:
    assert mapping.refund_status(status) == neutral


def test_ids_map_both_ways() -> None:
    assert mapping.txid_for(PAYMENT_ID) == TXID and mapping.payment_id_for(TXID) == PAYMENT_ID
    assert mapping.payment_id_for("fc9a4366ff3d4964b5dbc6c91a8722d3") is None
    assert mapping.refund_id_for(mapping.return_id_for("rfd_06h3qn8fc80a701zmjxp8w1pzg")) == "rfd_06h3qn8fc80a701zmjxp8w1pzg"
    assert mapping.minor("0.01") == 1 and mapping.minor("1234567890.12") == 123456789012
    for bad in ("1", "1.0", "1.001", "-1.00", "1e2", " 1.00"):
        with pytest.raises(ValueError):
            mapping.minor(bad)


# ---- secrets ----


async def test_secrets_stay_out_of_reprs_and_errors(harness: hp.Harness) -> None:
    assert hp.CLIENT_SECRET not in repr(harness.channel)
    from apss.channels.pix.client import _Settings
    assert hp.CLIENT_SECRET not in repr(_Settings(harness.credentials))
    with pytest.raises(ChannelUnavailable) as misconfigured:
        await harness.channel.create_payment(_payment(), {**harness.credentials, "certificate": "-----BEGIN x"})
    assert misconfigured.value.code == "channel_misconfigured" and "BEGIN" not in str(misconfigured.value)
    with pytest.raises(ChannelUnavailable) as broken:
        await harness.channel.create_payment(_payment(), {**harness.credentials, "certificate": "-----BEGIN x",
                                                          "private_key": "-----BEGIN PRIVATE KEY----- secret"})
    assert broken.value.code == "channel_misconfigured" and "secret" not in str(broken.value)


# ---- mTLS over a real TLS connection ----


def _pki(tmp_path):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(subject: str, key, issuer_name, issuer_key, *, ca: bool = False, server: bool = False):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                          key_encipherment=False, data_encipherment=False,
                                                          key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                          encipher_only=False, decipher_only=False), critical=True)
            builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                            critical=False)
            usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                            critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def pem(obj) -> str:
        if isinstance(obj, x509.Certificate):
            return obj.public_bytes(serialization.Encoding.PEM).decode()
        return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test PSP CA")])
    ca = issue("Test PSP CA", ca_key, ca_name, ca_key, ca=True)
    files = {}
    for name, text in {"ca.pem": pem(ca), "server.pem": pem(issue("127.0.0.1", server_key, ca_name, ca_key, server=True)),
                       "server.key": pem(server_key)}.items():
        (tmp_path / name).write_text(text)
        files[name] = str(tmp_path / name)
    return files, pem(issue("merchant", client_key, ca_name, ca_key)), pem(client_key)


async def test_mtls_client_certificate_is_presented_and_required(tmp_path) -> None:
    files, client_cert, client_key = _pki(tmp_path)
    standin = PixStandIn(client_id=hp.CLIENT_ID, client_secret=hp.CLIENT_SECRET, chave=hp.CHAVE)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(standin, host="127.0.0.1", port=port, log_level="warning",
                                           ssl_certfile=files["server.pem"], ssl_keyfile=files["server.key"],
                                           ssl_ca_certs=files["ca.pem"], ssl_cert_reqs=ssl.CERT_REQUIRED))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started)
        credentials = {"api_base": f"https://127.0.0.1:{port}", "client_id": hp.CLIENT_ID,
                       "client_secret": hp.CLIENT_SECRET, "chave": hp.CHAVE, "merchant_name": "Estudio",
                       "merchant_city": "SAO PAULO"}
        channel = PixChannel(public_url="http://apss.test", http=httpx.AsyncClient(verify=ssl.create_default_context(
            cafile=files["ca.pem"]), timeout=10), ca_file=files["ca.pem"])
        channel._clock = TestClock(NOW_S * 1000)
        # Without the pair the PSP's TLS refuses the connection (nothing was done there).
        with pytest.raises((ChannelUnreachable, ChannelUnavailable)):
            await channel.create_payment(_payment(), credentials)
        assert standin.requests == []
        created = await channel.create_payment(_payment(), {**credentials, "certificate": client_cert,
                                                            "private_key": client_key})
        assert created.provider_ref == TXID and standin.cobs[TXID]["status"] == "ATIVA"
        assert ("POST", "/oauth/token") in _calls(standin)
        mtls_clients = list(channel._mtls.values())
        assert mtls_clients and not any(c.is_closed for c in mtls_clients)
        await channel.aclose()  # the server's shutdown closes the mutual-TLS clients the channel opened
        assert all(c.is_closed for c in mtls_clients)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
