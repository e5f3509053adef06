'''Merchant webhooks: endpoints, an outbox of events, and signed deliveries with retries.

An event is written by `emit(tx, ...)` inside the transaction of the change it reports, with one
pending delivery per enabled endpoint subscribed to its type; after COMMIT the `deliver_due` job
POSTs it (never inside a write transaction) and records the answers of a batch in one write.
At least once: consumers de-duplicate on the event `id`. Order is not guaranteed: re-fetch the
object when order matters. The receiver's answer decides: 2xx done; 4xx other than 408/429 is
permanent (the delivery stops and an alert is raised); anything else (5xx, 408, 429, timeout,
connection error) is retried with exponential backoff and full jitter for up to 3 days, after
which an endpoint that has not succeeded since is disabled and an alert raised.

Several instances on one PostgreSQL database: a pass claims its deliveries first (one write:
`SELECT ... FOR UPDATE SKIP LOCKED`, then `claimed_by`/`claimed_until_ms` set), so two instances'
passes take disjoint rows and never send one attempt twice at once; the answer's record ends the
claim, and the claims of an instance that died mid-pass expire after its longest possible pass
(attempt timeout x batches of the send concurrency, plus a minute). Passes may thus run on every
instance at once: the job runs where a commit poked it, besides its lease owner (jobs/scheduler.py).

Targets obey the SSRF rules of services/outbound.py: live merchants' URLs are https to public
addresses, checked when saved and again after DNS when connecting; a refused target fails the
delivery for good as `target_not_allowed`, before any connection.

Each request carries `APSS-Signature: t=<unix>,v1=<hex>` where the hex is HMAC-SHA256 with the
endpoint's secret (`whsec_...`) over `"<t>.<raw body>"`; during a secret rotation a second `v1`
made with the previous secret is added for 24 h. Also `APSS-Event-Id`, `APSS-Event-Type` and
`APSS-Delivery-Id`. Verifying it in a receiver (standard library only):

    import hashlib, hmac, json, time

    def verify_apss_signature(secret: str, header: str, raw_body: bytes, tolerance_s: int = 300) -> dict:
        """Return the event, or raise ValueError. Pass the raw bytes, before any JSON parsing."""
        timestamp, signatures = None, []
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            if key == "t" and timestamp is None:
                timestamp = int(value)
            elif key == "v1":
                signatures.append(value)
        if timestamp is None or not signatures:
            raise ValueError("malformed APSS-Signature header")
        if abs(time.time() - timestamp) > tolerance_s:
            raise ValueError("timestamp outside the tolerance (replayed request?)")
        expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw_body, hashlib.sha256).hexdigest()
        if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            raise ValueError("no signature matches")
        return json.loads(raw_body)  # then de-duplicate on event["id"]

Answer 2xx quickly (before slow work); a 4xx other than 408/429 stops the delivery for good.
'''

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable
from typing import Annotated, Any, Literal

import httpx
import msgspec
from msgspec import UNSET, Meta, UnsetType

from apss.clock import Clock, format_rfc3339, parse_rfc3339
from apss.crypto import Keyring, hmac_sha256_hex, sign_timestamped
from apss.errors import InvalidRequest, InvalidTransition, NotFound, TargetNotAllowed
from apss.ids import new_id
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.orders.lifecycle import raise_alert
from apss.services.outbound import TargetClients, check_webhook_url
from apss.services.paging import page_of
from apss.store import webhooks as store
from apss.store.db import Database, Row, Tx

__all__ = [
    "WebhookEvents",
    "API_VERSION",
    "EVENT_TYPES",
    "ReplayView",
    "WebhookDeliveryList",
    "WebhookDeliveryView",
    "WebhookEndpointCreate",
    "WebhookEndpointList",
    "WebhookEndpointSecretView",
    "WebhookEndpointUpdate",
    "WebhookEndpointView",
    "WebhookReplay",
    "Webhooks",
]

log = logging.getLogger("apss.webhooks")

API_VERSION = "2026-11-01"
EVENT_TYPES = frozenset({
    "order.paid", "order.delivering", "order.fulfilled", "order.expired", "order.canceled", "order.failed",
    "order.partially_refunded", "order.refunded", "order.in_review", "refund.succeeded", "refund.failed",
    "settlement.created", "alert.created", "dispute.created", "dispute.updated", "dispute.closed", "delivery.pending",
    # subscriptions (apss/services/subscriptions/periods.py WEBHOOK_EVENTS): `subscription.payment_required`
    # asks the game to have the player pay a renewal on a channel that cannot charge a saved method
    "subscription.created", "subscription.activated", "subscription.renewed", "subscription.payment_failed",
    "subscription.payment_required", "subscription.past_due", "subscription.canceled", "subscription.resumed",
    "subscription.incomplete_expired", "subscription.cancel_scheduled", "subscription.change_requested",
    "subscription.change_scheduled", "subscription.changed",
})
_ALL = "*"
_TARGET_NOT_ALLOWED = "target_not_allowed"
_HOUR_S = 3600
_DAY_S = 86_400

EventTypes = Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(min_length=1, max_length=50)]
Url = Annotated[str, Meta(min_length=8, max_length=2048, pattern=r"^https?://")]


class WebhookEndpointCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: Url
    events: EventTypes


class WebhookEndpointUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: Url | UnsetType = UNSET
    events: EventTypes | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET


class WebhookReplay(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    since: Annotated[str, Meta(min_length=10, max_length=40, description="RFC 3339 time; events created at or after it")]


class WebhookEndpointView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    url: str
    events: list[str]
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None  # api | failing_too_long
    previous_secret_expires_at: str | None  # while a rolled secret still signs
    created_at: str


class WebhookEndpointSecretView(WebhookEndpointView, frozen=True, kw_only=True):
    secret: str  # shown only when created or rolled


class WebhookEndpointList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[WebhookEndpointView]
    has_more: bool
    next_cursor: str | None


class WebhookDeliveryView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None


class WebhookDeliveryList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[WebhookDeliveryView]
    has_more: bool
    next_cursor: str | None


class ReplayView(msgspec.Struct, frozen=True, kw_only=True):
    endpoint_id: str
    since: str
    deliveries_created: int


class _Envelope(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: str
    created: int
    data: dict[str, Any]
    api_version: str


class _Sent(msgspec.Struct, frozen=True, kw_only=True):
    """What one attempt got: a status code, or an error before any answer."""

    status_code: int | None
    error: str | None


_encoder = msgspec.json.Encoder()
_events_decoder = msgspec.json.Decoder(list[str])


def _time(ms: int | None) -> str | None:
    return None if ms is None else format_rfc3339(ms)


def _endpoint_view(row: Row) -> WebhookEndpointView:
    assert row["status"] in ("enabled", "disabled")
    return WebhookEndpointView(
        id=row["id"], url=row["url"], events=_events_decoder.decode(row["events"]), status=row["status"],
        disabled_reason=row["disabled_reason"], previous_secret_expires_at=_time(row["previous_secret_expires_at_ms"]),
        created_at=format_rfc3339(row["created_at_ms"]))


def _with_secret(row: Row, secret: str) -> WebhookEndpointSecretView:
    return WebhookEndpointSecretView(**msgspec.structs.asdict(_endpoint_view(row)), secret=secret)


def _delivery_view(row: Row) -> WebhookDeliveryView:
    assert row["status"] in ("pending", "succeeded", "failed")
    return WebhookDeliveryView(
        id=row["id"], event_id=row["event_id"], event_type=row["event_type"], endpoint_id=row["endpoint_id"],
        status=row["status"], attempts=row["attempts"], next_attempt_at=_time(row["next_attempt_at_ms"]),
        last_status_code=row["last_status_code"], last_error=row["last_error"],
        created_at=format_rfc3339(row["created_at_ms"]), delivered_at=_time(row["delivered_at_ms"]))


def _check_event_types(events: list[str]) -> None:
    if _ALL in events and len(events) > 1:
        raise InvalidRequest("'*' subscribes to every event; give it alone.", code="event_type_unknown", param="events")
    for index, name in enumerate(events):
        if name != _ALL and name not in EVENT_TYPES:
            raise InvalidRequest(f"Unknown event type '{name}'; known: {', '.join(sorted(EVENT_TYPES))}.",
                                 code="event_type_unknown", param=f"events[{index}]")


def _subscribed(events_json: str, event_type: str) -> bool:
    events = _events_decoder.decode(events_json)
    return _ALL in events or event_type in events


def _new_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"



def _full_jitter(ceiling_s: float) -> float:
    return random.uniform(0, ceiling_s)


def _is_permanent(status_code: int) -> bool:
    """The receiver refused the event itself: retrying would get the same answer."""
    return 400 <= status_code < 500 and status_code not in (408, 429)


class WebhookEvents:
    """Writes merchant webhook events and their deliveries inside the caller's transaction (the
    outbox); it needs no database handle, so the writer's event sink can be built before it."""

    def __init__(self, *, clock: Clock, wake: Callable[[], None]) -> None:
        self._clock = clock
        self.wake = wake  # pokes the delivery job after a commit

    def emit(self, tx: Tx, *, merchant_id: str, type: str, data: Any) -> str:
        """Record an event and its deliveries inside the caller's write transaction (plain sync
        code: no I/O). `data` is the object (a dict or a view Struct), sent as `data.object`.
        Delivered only after COMMIT; returns the event id."""
        assert type in EVENT_TYPES, f"unknown webhook event type {type!r}"
        assert merchant_id
        now_ms = self._clock.now_ms()
        event_id = new_id("evt")
        payload = _encoder.encode(_Envelope(id=event_id, type=type, created=now_ms // 1000, data={"object": data},
                                            api_version=API_VERSION))
        store.insert_event(tx, event_id=event_id, merchant_id=merchant_id, type=type, payload=payload, now_ms=now_ms)
        queued = 0
        for endpoint in store.enabled_endpoints_tx(tx, merchant_id=merchant_id):
            if _subscribed(endpoint["events"], type):
                store.insert_delivery(tx, delivery_id=new_id("wd"), merchant_id=merchant_id, event_id=event_id,
                                      endpoint_id=endpoint["id"], now_ms=now_ms)
                queued += 1
        if queued:
            tx.after_commit(lambda: self.wake())
        return event_id


class Webhooks:
    def __init__(
        self, *, db: Database, clock: Clock, keyring: Keyring, idempotency: Idempotency,
        wake: Callable[[], None] = lambda: None,  # pokes the delivery job after a commit
        events: WebhookEvents | None = None,
        http: TargetClients | None = None,
        allow_private_targets: bool = False,
        attempt_timeout_s: float = 10.0,
        retry_base_s: float = 30.0,
        retry_factor: float = 2.0,
        retry_cap_s: float = 6 * _HOUR_S,
        retry_window_s: float = 3 * _DAY_S,
        rotation_overlap_s: float = _DAY_S,
        retention_s: float = 30 * _DAY_S,
        batch_max: int = 200,
        send_concurrency_max: int = 16,
        endpoints_max: int = 16,
        replay_events_max: int = 10_000,
        jitter: Callable[[float], float] = _full_jitter,
        claimer: str = "local",  # this instance's id in the claims of a pass (PostgreSQL)
    ) -> None:
        assert 0 < retry_base_s <= retry_cap_s <= retry_window_s and retry_factor >= 1
        assert 1 <= send_concurrency_max <= batch_max and endpoints_max >= 1 and replay_events_max >= 1
        assert retention_s > retry_window_s, "events outlive their retries"
        self._db = db
        self._clock = clock
        self._keyring = keyring
        self._idempotency = idempotency
        self.http = http  # set by app.py (closed at shutdown): every connection is checked after DNS
        self._allow_private_targets = allow_private_targets
        self._attempt_timeout_s = attempt_timeout_s
        self._retry_base_ms = int(retry_base_s * 1000)
        self._retry_factor = retry_factor
        self._retry_cap_ms = int(retry_cap_s * 1000)
        self._retry_window_ms = int(retry_window_s * 1000)
        self._rotation_overlap_ms = int(rotation_overlap_s * 1000)
        self._retention_ms = int(retention_s * 1000)
        self._batch_max = batch_max
        self._send_concurrency_max = send_concurrency_max
        self._endpoints_max = endpoints_max
        self._replay_events_max = replay_events_max
        self._jitter = jitter
        self._pass_lock = asyncio.Lock()  # one delivery pass at a time (the job and run_now)
        self._claimer = claimer
        # A pass's claim lasts as long as its slowest possible pass, and a minute more.
        self._claim_ms = int((attempt_timeout_s * -(-batch_max // send_concurrency_max) + 60) * 1000)
        self.wake = wake
        self._events = events or WebhookEvents(clock=clock, wake=wake)

    # -- the outbox ------------------------------------------------------------------------------
    def emit(self, tx: Tx, *, merchant_id: str, type: str, data: Any) -> str:
        return self._events.emit(tx, merchant_id=merchant_id, type=type, data=data)

    # -- endpoints -------------------------------------------------------------------------------
    async def create_endpoint(self, *, merchant_id: str, merchant_mode: str,
                              command: WebhookEndpointCreate) -> WebhookEndpointSecretView:
        """Not idempotent by key: the answer carries the secret, which is never stored in clear."""
        self._check_url(command.url, merchant_mode=merchant_mode)
        _check_event_types(command.events)

        def transaction(tx: Tx) -> WebhookEndpointSecretView:
            if store.count_endpoints_tx(tx, merchant_id=merchant_id) >= self._endpoints_max:
                raise InvalidRequest(f"At most {self._endpoints_max} enabled webhook endpoints per merchant.",
                                     code="webhook_endpoints_max_reached")
            endpoint_id, secret = new_id("we"), _new_secret()
            store.insert_endpoint(tx, {
                "id": endpoint_id, "merchant_id": merchant_id, "url": command.url,
                "events": _encoder.encode(command.events).decode(),
                "secret_sealed": self._keyring.seal(secret, context=endpoint_id), "created_at_ms": self._clock.now_ms(),
            })
            return _with_secret(store.get_endpoint_tx(tx, merchant_id=merchant_id, endpoint_id=endpoint_id), secret)

        return await self._db.write(transaction)

    async def get_endpoint(self, *, merchant_id: str, endpoint_id: str) -> WebhookEndpointView:
        row = await store.get_endpoint(self._db, merchant_id=merchant_id, endpoint_id=endpoint_id)
        if row is None:
            raise NotFound(f"No such webhook endpoint: '{endpoint_id}'", param="id")
        return _endpoint_view(row)

    async def list_endpoints(self, *, merchant_id: str, after_id: str | None, limit: int) -> tuple[list[WebhookEndpointView], bool]:
        rows = await store.list_endpoints(self._db, merchant_id=merchant_id, after_id=after_id, limit=limit + 1)
        return page_of(rows, limit, _endpoint_view)

    async def update_endpoint(self, *, merchant_id: str, endpoint_id: str, command: WebhookEndpointUpdate,
                              merchant_mode: str | None = None) -> WebhookEndpointView:
        if command.url is not UNSET:
            assert merchant_mode is not None, "a new URL is checked against its merchant's rules"
            self._check_url(command.url, merchant_mode=merchant_mode)
        if command.events is not UNSET:
            _check_event_types(command.events)

        def transaction(tx: Tx) -> WebhookEndpointView:
            row = self._endpoint_tx(tx, merchant_id=merchant_id, endpoint_id=endpoint_id)
            enabling = command.enabled is True and row["status"] == "disabled"
            if enabling and store.count_endpoints_tx(tx, merchant_id=merchant_id) >= self._endpoints_max:
                raise InvalidRequest(f"At most {self._endpoints_max} enabled webhook endpoints per merchant.",
                                     code="webhook_endpoints_max_reached", param="enabled")
            now_ms = self._clock.now_ms()
            fields: dict[str, Any] = {}
            if command.url is not UNSET:
                fields["url"] = command.url
            if command.events is not UNSET:
                fields["events"] = _encoder.encode(command.events).decode()
            if enabling:
                fields.update(status="enabled", disabled_reason=None)
            store.update_endpoint(tx, endpoint_id=endpoint_id, fields=fields, now_ms=now_ms)
            if command.enabled is False:
                self._disable(tx, endpoint_id=endpoint_id, reason="api", now_ms=now_ms)
            return _endpoint_view(store.get_endpoint_tx(tx, merchant_id=merchant_id, endpoint_id=endpoint_id))

        return await self._db.write(transaction)

    async def delete_endpoint(self, *, merchant_id: str, endpoint_id: str) -> WebhookEndpointView:
        """Disable it (deliveries and their log stay); its pending deliveries fail."""
        return await self.update_endpoint(merchant_id=merchant_id, endpoint_id=endpoint_id,
                                          command=WebhookEndpointUpdate(enabled=False))

    async def roll_secret(self, *, merchant_id: str, endpoint_id: str) -> WebhookEndpointSecretView:
        """A new secret; the old one keeps signing (a second v1) for rotation_overlap_s."""

        def transaction(tx: Tx) -> WebhookEndpointSecretView:
            row = self._endpoint_tx(tx, merchant_id=merchant_id, endpoint_id=endpoint_id)
            now_ms, secret = self._clock.now_ms(), _new_secret()
            store.update_endpoint(tx, endpoint_id=endpoint_id, now_ms=now_ms, fields={
                "secret_sealed": self._keyring.seal(secret, context=endpoint_id),
                "previous_secret_sealed": row["secret_sealed"],
                "previous_secret_expires_at_ms": now_ms + self._rotation_overlap_ms,
            })
            return _with_secret(store.get_endpoint_tx(tx, merchant_id=merchant_id, endpoint_id=endpoint_id), secret)

        return await self._db.write(transaction)

    def _private_allowed(self, merchant_mode: str) -> bool:
        """Test merchants develop against localhost and private networks; live ones only reach
        them when the self-hosted setup says so (webhooks.allow_private_targets)."""
        assert merchant_mode in ("test", "live")
        return merchant_mode == "test" or self._allow_private_targets

    def _check_url(self, url: str, *, merchant_mode: str) -> None:
        check_webhook_url(url, https_required=merchant_mode == "live",
                          private_allowed=self._private_allowed(merchant_mode))

    def _endpoint_tx(self, tx: Tx, *, merchant_id: str, endpoint_id: str) -> Row:
        row = store.get_endpoint_tx(tx, merchant_id=merchant_id, endpoint_id=endpoint_id)
        if row is None:
            raise NotFound(f"No such webhook endpoint: '{endpoint_id}'", param="id")
        return row

    def _disable(self, tx: Tx, *, endpoint_id: str, reason: str, now_ms: int) -> bool:
        if not store.disable_endpoint(tx, endpoint_id=endpoint_id, reason=reason, now_ms=now_ms):
            return False
        store.fail_pending_deliveries(tx, endpoint_id=endpoint_id, error="endpoint_disabled")
        return True

    # -- the delivery log and replays --------------------------------------------------------------
    async def get_delivery(self, *, merchant_id: str, delivery_id: str) -> WebhookDeliveryView:
        row = await store.get_delivery(self._db, merchant_id=merchant_id, delivery_id=delivery_id)
        if row is None:
            raise NotFound(f"No such webhook delivery: '{delivery_id}'", param="id")
        return _delivery_view(row)

    async def list_deliveries(self, *, merchant_id: str, endpoint_id: str | None = None, event_id: str | None = None,
                              status: str | None = None, after_id: str | None = None,
                              limit: int = 20) -> tuple[list[WebhookDeliveryView], bool]:
        if endpoint_id is not None:
            await self.get_endpoint(merchant_id=merchant_id, endpoint_id=endpoint_id)  # 404 for another's
        rows = await store.list_deliveries(self._db, merchant_id=merchant_id, endpoint_id=endpoint_id, event_id=event_id,
                                           status=status, after_id=after_id, limit=limit + 1)
        return page_of(rows, limit, _delivery_view)

    async def retry_delivery(self, *, merchant_id: str, delivery_id: str, idem: IdempotencyRequest | None) -> Outcome:
        """Send again now: a pending delivery skips its backoff; a final one gets a new delivery
        of the same event (same event id, so the receiver can de-duplicate)."""

        def transaction(tx: Tx) -> WebhookDeliveryView:
            row = store.get_delivery_tx(tx, merchant_id=merchant_id, delivery_id=delivery_id)
            if row is None:
                raise NotFound(f"No such webhook delivery: '{delivery_id}'", param="id")
            endpoint = self._endpoint_tx(tx, merchant_id=merchant_id, endpoint_id=row["endpoint_id"])
            if endpoint["status"] != "enabled":
                raise InvalidTransition("The endpoint is disabled; enable it (PATCH enabled=true) before a retry.")
            now_ms = self._clock.now_ms()
            target = delivery_id
            if row["status"] == "pending":
                store.make_due(tx, delivery_id=delivery_id, now_ms=now_ms)
            else:
                target = new_id("wd")
                store.insert_delivery(tx, delivery_id=target, merchant_id=merchant_id, event_id=row["event_id"],
                                      endpoint_id=row["endpoint_id"], now_ms=now_ms)
            tx.after_commit(lambda: self.wake())
            return _delivery_view(store.get_delivery_tx(tx, merchant_id=merchant_id, delivery_id=target))

        return await self._idempotency.run(self._db, merchant_id=merchant_id, request=idem, fn=transaction, success_status=200)

    async def replay(self, *, merchant_id: str, endpoint_id: str, command: WebhookReplay,
                     idem: IdempotencyRequest | None) -> Outcome:
        """Resend every event since `since` that the endpoint subscribes to (new deliveries)."""
        try:
            since_ms = parse_rfc3339(command.since)
        except ValueError:
            raise InvalidRequest("'since' must be an RFC 3339 time, e.g. 2026-11-25T15:04:05Z.",
                                 code="parameter_invalid", param="since") from None

        def transaction(tx: Tx) -> ReplayView:
            endpoint = self._endpoint_tx(tx, merchant_id=merchant_id, endpoint_id=endpoint_id)
            if endpoint["status"] != "enabled":
                raise InvalidTransition("The endpoint is disabled; enable it (PATCH enabled=true) before a replay.")
            events = store.events_since(tx, merchant_id=merchant_id, since_ms=since_ms, limit=self._replay_events_max + 1)
            if len(events) > self._replay_events_max:
                raise InvalidRequest(f"More than {self._replay_events_max} events since then; choose a later 'since'.",
                                     code="replay_events_max_exceeded", param="since")
            now_ms, created = self._clock.now_ms(), 0
            for event in events:
                if _subscribed(endpoint["events"], event["type"]):
                    store.insert_delivery(tx, delivery_id=new_id("wd"), merchant_id=merchant_id,
                                          event_id=event["id"], endpoint_id=endpoint_id, now_ms=now_ms)
                    created += 1
            if created:
                tx.after_commit(lambda: self.wake())
            return ReplayView(endpoint_id=endpoint_id, since=format_rfc3339(max(since_ms, 0)), deliveries_created=created)

        return await self._idempotency.run(self._db, merchant_id=merchant_id, request=idem, fn=transaction, success_status=200)

    async def prune(self) -> int:
        """Forget final deliveries and events older than retention_s (a scheduler job)."""
        cutoff_ms = self._clock.now_ms() - self._retention_ms
        return await self._db.write(lambda tx: store.prune_events(tx, created_before_ms=cutoff_ms, limit=10_000))

    # -- sending (the scheduler job) ------------------------------------------------------------------
    async def deliver_due(self) -> int:
        """POST every due delivery (bounded concurrency, outside any transaction), then record
        the answers in one write transaction. Returns how many succeeded."""
        assert self.http is not None, "webhook HTTP client not wired"
        async with self._pass_lock:
            due = await self._take_due()
            if not due:
                return 0
            signing = {row["endpoint_id"]: self._signing_secrets(row) for row in due}
            gate = asyncio.Semaphore(self._send_concurrency_max)
            sent = await asyncio.gather(*(self._send(row, signing[row["endpoint_id"]], gate) for row in due))
            succeeded = await self._db.write(lambda tx: self._record(tx, due, sent))
        if len(due) == self._batch_max:
            self.wake()  # more may be due: run again soon rather than at the next interval
        return succeeded

    async def _take_due(self) -> list[Row]:
        """The pass's deliveries. SQLite: read (one process sends). PostgreSQL: claimed in a write
        transaction (FOR UPDATE SKIP LOCKED), so passes on two instances never send one attempt
        twice at once; recording the answer ends the claim, and a dead instance's claims expire."""
        now_ms = self._clock.now_ms()
        if self._db.dialect != "postgresql":
            return await store.due_deliveries(self._db, now_ms=now_ms, limit=self._batch_max)
        return await self._db.write(lambda tx: store.claim_due_deliveries(
            tx, now_ms=now_ms, limit=self._batch_max, owner=self._claimer, claimed_until_ms=now_ms + self._claim_ms))

    def _signing_secrets(self, row: Row) -> list[str]:
        """The current secret, then the previous one while its rotation overlap lasts."""
        found = [self._keyring.open(row["secret_sealed"], context=row["endpoint_id"])]
        expires_ms = row["previous_secret_expires_at_ms"]
        if row["previous_secret_sealed"] and expires_ms is not None and self._clock.now_ms() < expires_ms:
            found.append(self._keyring.open(row["previous_secret_sealed"], context=row["endpoint_id"]))
        return found

    def signature_header(self, *, signing_secrets: list[str], body: bytes) -> str:
        assert signing_secrets and body
        timestamp_s = self._clock.now_ms() // 1000
        header = sign_timestamped(secret=signing_secrets[0], timestamp_s=timestamp_s, body=body)
        for secret in signing_secrets[1:]:
            header += f",v1={hmac_sha256_hex(secret, str(timestamp_s).encode() + b'.' + body)}"
        return header

    async def _send(self, row: Row, signing_secrets: list[str], gate: asyncio.Semaphore) -> _Sent:
        if row["endpoint_status"] != "enabled":
            return _Sent(status_code=None, error="endpoint_disabled")
        body = bytes(row["payload"])
        async with gate:
            headers = {
                "Content-Type": "application/json", "User-Agent": "APSS-Webhooks/1",
                "APSS-Signature": self.signature_header(signing_secrets=signing_secrets, body=body),
                "APSS-Event-Id": row["event_id"], "APSS-Event-Type": row["type"], "APSS-Delivery-Id": row["id"],
            }
            client = self.http.client(private_allowed=self._private_allowed(row["merchant_mode"]))
            try:
                # Streamed and never read: a receiver's answer body cannot fill our memory. Never
                # redirected: a 3xx is the receiver's answer, not a new target to connect to.
                async with client.stream("POST", row["url"], content=body, headers=headers,
                                         timeout=self._attempt_timeout_s, follow_redirects=False) as response:
                    return _Sent(status_code=response.status_code, error=None)
            except TargetNotAllowed as refused:
                # Refused before any connection: the same answer whatever listens there.
                log.warning("webhook endpoint %s: its host resolves to an address that is not allowed", row["endpoint_id"])
                assert refused.code == _TARGET_NOT_ALLOWED
                return _Sent(status_code=None, error=_TARGET_NOT_ALLOWED)
            except httpx.TimeoutException:
                return _Sent(status_code=None, error="timeout")
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                return _Sent(status_code=None, error=f"connection_error: {type(exc).__name__}")

    def _record(self, tx: Tx, due: list[Row], sent: list[_Sent]) -> int:
        assert len(due) == len(sent)
        now_ms, succeeded = self._clock.now_ms(), 0
        for row, result in zip(due, sent, strict=True):
            code = result.status_code
            if code is not None and 200 <= code < 300:
                succeeded += store.record_success(tx, delivery_id=row["id"], endpoint_id=row["endpoint_id"],
                                                  status_code=code, now_ms=now_ms)
            elif result.error == "endpoint_disabled":
                store.record_failure(tx, delivery_id=row["id"], status_code=None, error=result.error, counts_attempt=False)
            elif result.error == _TARGET_NOT_ALLOWED:
                # Permanent, like a 4xx: the same host would be refused again; fix it, then retry.
                if store.record_failure(tx, delivery_id=row["id"], status_code=None, error=result.error,
                                        counts_attempt=True):
                    self._alert_once(tx, row, kind="webhook_target_not_allowed", now_ms=now_ms,
                                     message=f"Webhook endpoint {row['endpoint_id']} resolves to an address that "
                                             "webhooks may not reach (loopback, private, link-local or reserved); "
                                             f"event {row['event_id']} ({row['type']}) was not sent.")
            elif code is not None and _is_permanent(code):
                if store.record_failure(tx, delivery_id=row["id"], status_code=code, error=f"HTTP {code}",
                                        counts_attempt=True):
                    self._alert_once(tx, row, kind="webhook_delivery_rejected", now_ms=now_ms,
                                     message=f"Webhook endpoint {row['endpoint_id']} answered HTTP {code} to event "
                                             f"{row['event_id']} ({row['type']}); it is not retried.")
            else:
                self._retry_or_give_up(tx, row, result, now_ms=now_ms)
        return succeeded

    def _retry_or_give_up(self, tx: Tx, row: Row, result: _Sent, *, now_ms: int) -> None:
        error = result.error or f"HTTP {result.status_code}"
        attempts = row["attempts"] + 1
        deadline_ms = row["created_at_ms"] + self._retry_window_ms
        if now_ms < deadline_ms:
            ceiling_ms = min(self._retry_cap_ms, self._retry_base_ms * self._retry_factor ** (attempts - 1))
            delay_ms = max(1000, int(self._jitter(ceiling_ms / 1000) * 1000))
            assert delay_ms <= max(ceiling_ms, 1000)
            store.record_retry(tx, delivery_id=row["id"], status_code=result.status_code, error=error,
                               next_attempt_at_ms=min(now_ms + delay_ms, deadline_ms))
            return
        if not store.record_failure(tx, delivery_id=row["id"], status_code=result.status_code, error=error,
                                    counts_attempt=True):
            return
        endpoint = store.get_endpoint_tx(tx, merchant_id=row["merchant_id"], endpoint_id=row["endpoint_id"])
        last_ok_ms = endpoint["last_succeeded_at_ms"]
        if last_ok_ms is None or last_ok_ms < row["created_at_ms"]:  # failing for the whole window
            if self._disable(tx, endpoint_id=row["endpoint_id"], reason="failing_too_long", now_ms=now_ms):
                raise_alert(tx, merchant_id=row["merchant_id"], kind="webhook_endpoint_disabled", severity="warning",
                            object_id=row["endpoint_id"], now_ms=now_ms,
                            message=f"Webhook endpoint {row['endpoint_id']} failed every delivery for "
                                    f"{self._retry_window_ms // 3_600_000} h (last: {error}) and was disabled; "
                                    "fix it, enable it, and replay the events since it failed.")
            log.warning("webhook endpoint %s disabled after failing since %s", row["endpoint_id"], row["created_at_ms"])
            return
        self._alert_once(tx, row, kind="webhook_delivery_failed", now_ms=now_ms,
                         message=f"Event {row['event_id']} ({row['type']}) could not be delivered to webhook endpoint "
                                 f"{row['endpoint_id']} within the retry window (last: {error}).")

    @staticmethod
    def _alert_once(tx: Tx, row: Row, *, kind: str, message: str, now_ms: int) -> None:
        """One open alert per endpoint and kind: a receiver refusing everything is one problem."""
        if store.open_alert_exists(tx, merchant_id=row["merchant_id"], kind=kind, object_id=row["endpoint_id"]):
            return
        raise_alert(tx, merchant_id=row["merchant_id"], kind=kind, severity="warning", object_id=row["endpoint_id"],
                    message=message, now_ms=now_ms)
