"""PIX through a PSP's standard PIX API (the central bank's bacen/pix-api, v2): HTTP, OAuth2, mTLS.

- Auth: OAuth2 client credentials at `token_url` (default `<api_base>/oauth/token`; HTTP Basic
  with client_id:client_secret, `grant_type=client_credentials`), the bearer token cached until a
  minute before it expires and fetched again once after a 401. Every call (token included) goes
  over mTLS with the merchant's `certificate` and `private_key` when both are set; test
  merchants may leave them out (live merchants must set them: their settings are refused without).
- Charges: `PUT /cob/{txid}` (idempotent on the txid: a retry after a timeout finds the first)
  with `calendario.expiracao` = the seconds left of the order's reservation, `valor.original`
  from integer centavos and the merchant's `chave`. The payer gets the PSP's `pixCopiaECola`,
  or, when the PSP returns none, a dynamic BR Code APSS builds from the charge's `location`.
- Callbacks: the PSP posts `{"pix": [...]}` to the registered webhook URL with `/pix` appended.
  The standard does not sign them, so a notice is only a hint: every pix it names is confirmed by
  `GET /cob/{txid}` (status CONCLUIDA, the same endToEndId and amount) before anything is applied.
  The webhook is registered (`PUT /webhook/{chave}`) before a merchant's first charge in each
  process: it is idempotent at the PSP.
- Refunds: `PUT /pix/{e2eid}/devolucao/{id}` on the pix that paid the charge (found by
  `GET /cob/{txid}`), and `GET` of the same for its status.

Errors: not reached -> ChannelUnreachable; no answer in time -> ChannelTimeout; a 4xx problem
document (RFC 7807) -> ProviderDeclined with the error type's last segment (`CobOperacaoInvalida`)
as provider_code, except 401 (token refused twice), 408 and 429; 5xx and unreadable answers ->
ChannelUnavailable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from apss.channels.base import (
    CallbackEvent,
    CallbackReply,
    CallbackRequest,
    Credentials,
    NextAction,
    PaymentCreated,
    PaymentQuery,
    PaymentReport,
    PaymentRequest,
    RefundQuery,
    RefundRequest,
    RefundResult,
    Setting,
)
from apss.channels.pix import brcode, mapping
from apss.channels.tokens import AccessTokens
from apss.clock import Clock, SystemClock
from apss.domain.payments import CallbackKind, PaymentStatus
from apss.errors import (
    CallbackRejected,
    ChannelTimeout,
    ChannelUnavailable,
    ChannelUnreachable,
    CurrencyNotSupported,
    ProviderDeclined,
)

__all__ = ["PixChannel"]

log = logging.getLogger("apss.channels.pix")

_HTTP_TIMEOUT_S = 10.0
_TOKEN_MARGIN_S = 60  # a token is fetched again this long before the PSP says it expires
_BODY_BYTES_MAX = 256 * 1024
_NOTICE_PIX_MAX = 100  # PSPs may group pix per key in one call; more is not a PSP's
_SCOPE = "cob.write cob.read pix.write pix.read webhook.write"
_CACHE_MAX = 256

_T = TypeVar("_T")


class _Settings:
    """One merchant's PIX settings. Its repr shows no secret."""

    __slots__ = ("api_base", "token_url", "client_id", "client_secret", "certificate", "private_key", "chave",
                 "merchant_name", "merchant_city")

    def __init__(self, credentials: Credentials) -> None:
        def need(name: str) -> str:
            value = credentials.get(name, "")
            if not value:
                raise ChannelUnavailable(f"pix setting '{name}' is missing", code="channel_misconfigured")
            return value

        self.api_base = need("api_base").rstrip("/")
        self.token_url = credentials.get("token_url") or f"{self.api_base}/oauth/token"
        self.client_id = need("client_id")
        self.client_secret = need("client_secret")
        self.chave = need("chave")
        self.merchant_name = need("merchant_name")
        self.merchant_city = need("merchant_city")
        self.certificate = credentials.get("certificate", "")
        self.private_key = credentials.get("private_key", "")
        if bool(self.certificate) != bool(self.private_key):
            raise ChannelUnavailable("pix settings 'certificate' and 'private_key' go together",
                                     code="channel_misconfigured")

    def __repr__(self) -> str:
        return f"_Settings(api_base={self.api_base!r}, mtls={bool(self.certificate)})"


def _ssl_context(certificate: str, private_key: str, ca_file: str | None) -> ssl.SSLContext:
    """A client TLS context holding the merchant's certificate pair (the ssl module loads PEMs
    from files only: they live in a private temporary directory for the call, then go)."""
    context = ssl.create_default_context(cafile=ca_file)
    with tempfile.TemporaryDirectory(prefix="apss-pix-") as directory:
        cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        for path, text in ((cert_path, certificate), (key_path, private_key)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
                file.write(text)
        try:
            context.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, ValueError):
            # `from None`: the error could quote key material.
            raise ChannelUnavailable("pix settings 'certificate' and 'private_key' are not a matching PEM pair",
                                     code="channel_misconfigured") from None
    return context


class PixChannel:
    """PIX immediate charges (cob) with a BR Code, confirmed callbacks, returns (devolucao)."""

    name = "pix"
    test_only = False
    settings = {
        "api_base": Setting(secret=False),  # every PSP has its own host: no default
        "token_url": Setting(secret=False, required=False),
        "client_id": Setting(secret=False),
        "client_secret": Setting(secret=True),
        "certificate": Setting(secret=False, required=False, required_live=True),
        "private_key": Setting(secret=True, required=False, required_live=True),
        "chave": Setting(secret=False),
        "merchant_name": Setting(secret=False, chars_max=brcode.NAME_CHARS_MAX),
        "merchant_city": Setting(secret=False, chars_max=brcode.CITY_CHARS_MAX),
    }

    def __init__(self, *, public_url: str, http: httpx.AsyncClient | None = None, clock: Clock | None = None,
                 mtls_client: Callable[[ssl.SSLContext], httpx.AsyncClient] | None = None,
                 ca_file: str | None = None) -> None:
        """`mtls_client` makes the client for one certificate pair (default: httpx with that TLS
        context); `ca_file` replaces the system's CAs for the PSP's server certificate (tests)."""
        self._public_url = public_url.rstrip("/")
        self._http = http if http is not None else httpx.AsyncClient(timeout=_HTTP_TIMEOUT_S)
        self._clock = clock if clock is not None else SystemClock()
        self._mtls_client = mtls_client or (lambda context: httpx.AsyncClient(verify=context, timeout=self._http.timeout))
        self._ca_file = ca_file
        self._mtls: dict[str, httpx.AsyncClient] = {}
        self._tokens = AccessTokens(now_s=lambda: self._clock.now_ms() // 1000, margin_s=_TOKEN_MARGIN_S,
                                    entries_max=_CACHE_MAX)  # by credentials digest
        self._webhooks: set[tuple[str, str, str]] = set()  # (api_base, chave, url) registered

    def __repr__(self) -> str:
        return f"PixChannel(public_url={self._public_url!r})"

    # ---- flows ----

    async def create_payment(self, request: PaymentRequest, credentials: Credentials) -> PaymentCreated:
        if request.currency != mapping.CURRENCY:
            raise CurrencyNotSupported(f"pix takes {mapping.CURRENCY} only, not {request.currency}", param="currency")
        settings = _Settings(credentials)
        await self._register_webhook(settings, request.callback_url)
        now_s = self._clock.now_ms() // 1000
        expiracao_s = max(1, request.expires_at_s - now_s) if request.expires_at_s is not None else 3600
        txid = mapping.txid_for(request.payment_id)
        body = mapping.cob_body(request, chave=settings.chave, expiracao_s=expiracao_s)
        cob = await self._call(settings, "PUT", f"/cob/{txid}", body, mapping.Cob)
        if cob.txid != txid or mapping.minor(cob.valor.original) != request.amount:
            raise ChannelUnavailable("pix answered for another charge or amount")
        return PaymentCreated(provider_ref=txid, status=PaymentStatus.REQUIRES_ACTION,
                              next_action=NextAction(type="qr_code", data=self._copia_e_cola(settings, cob, request)))

    @staticmethod
    def _copia_e_cola(settings: _Settings, cob: mapping.Cob, request: PaymentRequest) -> str:
        if cob.pixCopiaECola:
            return cob.pixCopiaECola
        if not cob.location:
            raise ChannelUnavailable("pix answered neither pixCopiaECola nor location")
        try:
            return brcode.build(merchant_name=settings.merchant_name, merchant_city=settings.merchant_city,
                                location=cob.location, amount=request.amount)
        except ValueError as exc:
            raise ChannelUnavailable(f"pix charge cannot be a BR Code: {exc}", code="channel_misconfigured") from exc

    async def verify_callback(self, request: CallbackRequest, credentials: Credentials) -> list[CallbackEvent]:
        """Each pix of the notice, confirmed by GET /cob/{txid}: CONCLUIDA with the same
        endToEndId and amount is a payment (and the charge's final returns, refund events); a
        charge the PSP still holds unpaid yields nothing; a notice the PSP contradicts, or
        that names a charge it does not have, is rejected."""
        settings = _Settings(credentials)
        if len(request.body) > _BODY_BYTES_MAX:
            raise CallbackRejected("pix callback body too large")
        try:
            notice = msgspec.json.decode(request.body, type=mapping.Notice)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CallbackRejected(f"pix callback malformed: {exc}") from exc
        if len(notice.pix) > _NOTICE_PIX_MAX:
            raise CallbackRejected("pix callback names too many pix")
        events: list[CallbackEvent] = []
        for entry in notice.pix:
            if entry.txid is None:
                continue  # a pix to the key without a charge: not APSS's
            events.extend(await self._confirmed(settings, entry))
        return events

    async def _confirmed(self, settings: _Settings, entry: mapping.NoticePix) -> list[CallbackEvent]:
        assert entry.txid is not None
        if mapping.payment_id_for(entry.txid) is None or not mapping.is_e2eid(entry.endToEndId):
            raise CallbackRejected("pix callback names a txid or endToEndId APSS never makes")
        try:
            cob = await self._cob(settings, entry.txid)
        except ProviderDeclined as exc:
            raise CallbackRejected(f"pix callback names a charge the PSP does not confirm ({exc.provider_code})") from exc
        paid = mapping.paid_entry(cob)
        if paid is None:
            log.warning("pix callback for charge %s in status %s: nothing applied", cob.txid, cob.status)
            return []
        confirmed = next((p for p in cob.pix if p.endToEndId == entry.endToEndId), None)
        if confirmed is None or confirmed.valor != entry.valor:
            raise CallbackRejected("pix callback disagrees with the PSP's record of the charge")
        try:
            payment = CallbackEvent(
                event_id=paid.endToEndId, kind=CallbackKind.PAYMENT_SUCCEEDED, payment_id=mapping.payment_id_for(cob.txid),
                provider_ref=cob.txid, amount=mapping.minor(paid.valor), currency=mapping.CURRENCY,
                provider_refs=[paid.endToEndId],
            )
            return [payment, *mapping.refund_events(cob, paid)]
        except ValueError as exc:
            raise CallbackRejected(f"pix charge malformed: {exc}") from exc

    def callback_reply(self, *, accepted: bool) -> CallbackReply:
        return CallbackReply(status_code=200 if accepted else 400)

    async def query_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport:
        settings = _Settings(credentials)
        cob = await self._cob(settings, query.provider_ref or mapping.txid_for(query.payment_id))
        try:
            return mapping.payment_report(cob)
        except ValueError as exc:
            raise ChannelUnavailable(f"pix charge malformed: {exc}") from exc

    async def cancel_payment(self, query: PaymentQuery, credentials: Credentials) -> None:
        """PATCH the charge to REMOVIDA_PELO_USUARIO_RECEBEDOR. One already removed, or unknown to
        the PSP, can never be paid: closed too; a paid one is ProviderDeclined (CONCLUIDA)."""
        settings = _Settings(credentials)
        txid = query.provider_ref or mapping.txid_for(query.payment_id)
        try:
            cob = await self._cob(settings, txid)
        except ProviderDeclined as exc:
            if exc.provider_code in ("NaoEncontrado", "CobNaoEncontrado"):
                return
            raise
        status = mapping.payment_status(cob.status)
        if status is PaymentStatus.CANCELED:
            return
        if status is PaymentStatus.SUCCEEDED:
            raise ProviderDeclined("pix charge is already paid", provider_code=cob.status)
        await self._call(settings, "PATCH", f"/cob/{txid}", {"status": "REMOVIDA_PELO_USUARIO_RECEBEDOR"}, mapping.Cob)

    async def refund(self, request: RefundRequest, credentials: Credentials) -> RefundResult:
        if request.currency != mapping.CURRENCY:
            raise CurrencyNotSupported(f"pix refunds {mapping.CURRENCY} only", param="currency")
        settings = _Settings(credentials)
        e2eid = await self._paid_e2eid(settings, request.provider_ref)
        return_id = mapping.return_id_for(request.refund_id)
        path = f"/pix/{e2eid}/devolucao/{return_id}"
        try:
            answer = await self._call(settings, "PUT", path, mapping.devolucao_body(request), mapping.Devolucao)
        except ProviderDeclined as refused:
            # The spec refuses an id used before: a retry after a lost answer finds the first.
            try:
                answer = await self._call(settings, "GET", path, None, mapping.Devolucao)
            except ProviderDeclined:
                raise refused from None
        if answer.id != return_id or mapping.minor(answer.valor) != request.amount:
            raise ChannelUnavailable("pix answered for another return or amount")
        return mapping.refund_result(answer)

    async def query_refund(self, query: RefundQuery, credentials: Credentials) -> RefundResult:
        settings = _Settings(credentials)
        e2eid = await self._paid_e2eid(settings, query.provider_ref)
        return_id = mapping.return_id_for(query.refund_id)
        try:
            answer = await self._call(settings, "GET", f"/pix/{e2eid}/devolucao/{return_id}", None, mapping.Devolucao)
        except ProviderDeclined as exc:
            if exc.provider_code in ("NaoEncontrado", "PixDevolucaoNaoEncontrada"):  # the PSP made no such return
                return RefundResult(provider_refund_ref=query.provider_refund_ref or return_id, status="failed",
                                    failure_code="refund_not_found")
            raise
        if answer.id != return_id:
            raise ChannelUnavailable("pix answered for another return")
        return mapping.refund_result(answer)

    # ---- PSP calls ----

    async def _cob(self, settings: _Settings, txid: str) -> mapping.Cob:
        cob = await self._call(settings, "GET", f"/cob/{quote(txid, safe='')}", None, mapping.Cob)
        if cob.txid != txid:
            raise ChannelUnavailable("pix answered for another charge")
        return cob

    async def _paid_e2eid(self, settings: _Settings, txid: str) -> str:
        paid = mapping.paid_entry(await self._cob(settings, txid))
        if paid is None:
            raise ProviderDeclined("pix charge has no pix to return", provider_code="CobNaoConcluida")
        return paid.endToEndId

    async def _register_webhook(self, settings: _Settings, callback_url: str) -> None:
        """PUT /webhook/{chave} once per process and URL. A failure only delays notices (the
        janitor asks the PSP about every open payment): logged, tried again at the next charge."""
        key = (settings.api_base, settings.chave, callback_url)
        if key in self._webhooks:
            return
        try:
            await self._send(settings, "PUT", f"/webhook/{quote(settings.chave, safe='')}", {"webhookUrl": callback_url})
        except (ProviderDeclined, ChannelUnavailable) as exc:
            log.warning("pix webhook registration failed (%s); charges go on", exc.code)
            return
        if len(self._webhooks) >= _CACHE_MAX:
            self._webhooks.clear()
        self._webhooks.add(key)

    async def _call(self, settings: _Settings, method: str, path: str, payload: dict[str, Any] | None,
                    answer_type: type[_T]) -> _T:
        response = await self._send(settings, method, path, payload)
        try:
            return msgspec.json.decode(response.content, type=answer_type)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ChannelUnavailable(f"pix answer malformed: {exc}") from exc

    async def _send(self, settings: _Settings, method: str, path: str, payload: dict[str, Any] | None) -> httpx.Response:
        body = msgspec.json.encode(payload) if payload is not None else None
        for attempt in range(2):
            token = await self._token(settings)
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            response = await self._http_call(settings, method, settings.api_base + path, headers=headers, content=body)
            if response.status_code == 401 and attempt == 0:
                self._tokens.forget(self._token_key(settings))  # revoked or expired early: once more
                continue
            if response.status_code >= 300:
                raise _error(response)
            return response
        raise AssertionError("unreachable")

    @staticmethod
    def _token_key(settings: _Settings) -> str:
        material = "\0".join((settings.token_url, settings.client_id, settings.client_secret, settings.certificate))
        return hashlib.sha256(material.encode()).hexdigest()

    async def _token(self, settings: _Settings) -> str:
        key = self._token_key(settings)
        cached = self._tokens.get(key)
        if cached is not None:
            return cached
        response = await self._http_call(
            settings, "POST", settings.token_url, auth=(settings.client_id, settings.client_secret),
            data={"grant_type": "client_credentials", "scope": _SCOPE}, headers={"Accept": "application/json"})
        if response.status_code >= 300:
            raise _error(response, token=True)
        try:
            token = msgspec.json.decode(response.content, type=mapping.Token)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ChannelUnavailable(f"pix token answer malformed: {type(exc).__name__}") from None
        if token.token_type.lower() != "bearer" or not token.access_token:
            raise ChannelUnavailable("pix token is not a bearer token")
        self._tokens.put(key, token.access_token, expires_in_s=token.expires_in)
        return token.access_token

    async def aclose(self) -> None:
        """Close the mutual-TLS clients (the server's shutdown; the shared client is closed by app.py)."""
        clients, self._mtls = list(self._mtls.values()), {}
        for client in clients:
            await client.aclose()

    def _client(self, settings: _Settings) -> httpx.AsyncClient:
        if not settings.certificate:
            return self._http
        key = hashlib.sha256(f"{settings.certificate}\0{settings.private_key}".encode()).hexdigest()
        client = self._mtls.get(key)
        if client is None:
            if len(self._mtls) >= _CACHE_MAX:
                self._mtls.clear()  # the dropped clients close with their connections' idle timeout
            client = self._mtls[key] = self._mtls_client(_ssl_context(settings.certificate, settings.private_key,
                                                                      self._ca_file))
        return client

    async def _http_call(self, settings: _Settings, method: str, url: str, **kwargs: Any) -> httpx.Response:
        target = f"{method} {url.split('?')[0].removeprefix(settings.api_base)}"
        try:
            return await self._client(settings).request(method, url, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ChannelUnreachable(f"pix could not be reached: {type(exc).__name__}") from exc
        except httpx.TimeoutException as exc:
            raise ChannelTimeout(f"pix did not answer {target} in time") from exc
        except httpx.HTTPError as exc:
            raise ChannelUnavailable(f"pix unreachable: {type(exc).__name__}") from exc


class _OAuthError(msgspec.Struct, frozen=True, kw_only=True):
    error: str = ""


def _error(response: httpx.Response, *, token: bool = False) -> ChannelUnavailable | ProviderDeclined:
    """A refusal: a 4xx is definite (ProviderDeclined), except 401 from the API (a token it no
    longer takes, twice), 408 and 429; anything else may have been done (ChannelUnavailable).
    The API answers RFC 7807 problems (provider_code: the error type's last segment,
    `CobOperacaoInvalida`); the token endpoint OAuth2's `{"error": "invalid_client"}`.
    Title and detail are cut short: they describe the request, never a secret."""
    status = response.status_code
    try:
        if token:
            problem = mapping.Problem(type=msgspec.json.decode(response.content, type=_OAuthError).error)
        else:
            problem = msgspec.json.decode(response.content, type=mapping.Problem)
    except (msgspec.DecodeError, msgspec.ValidationError):
        problem = mapping.Problem()
    code = problem.type.rstrip("/").rsplit("/", 1)[-1][:64] if problem.type else f"http_{status}"
    where = "token endpoint" if token else "API"
    message = f"pix {where} answered {status} {code}: {problem.title[:100]} {problem.detail[:200]}".rstrip(" :")
    retryable = status in (408, 429) or (status == 401 and not token)
    if 400 <= status < 500 and not retryable:
        return ProviderDeclined(message, provider_code=code)
    error = ChannelUnavailable(message)
    error.provider_code = code  # type: ignore[attr-defined]
    return error
