"""Idempotent requests: the key, a SHA-256 of the request, and the stored first response.

A response is stored in the same write transaction as the change it reports, so a crash can
never leave a change without its response or a response without its change. A business refusal
(e.g. out_of_stock) is a response too and is stored; a request refused before execution is not.
Two-step requests (an order: reserve, call the channel, record) hold the key in state `running`
between their transactions; at restart a `running` key is finished by its `resume` step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from apss.errors import ApssError, IdempotencyKeyInUse, IdempotencyKeyReused
from apss.services.views import encode
from apss.store import idempotency as keys
from apss.store.db import Database, Tx

__all__ = ["Idempotency", "IdempotencyRequest", "Outcome", "RenderError", "request_hash"]

RenderError = Callable[[ApssError], tuple[int, bytes]]
T = TypeVar("T")


class IdempotencyRequest(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    request_hash: str


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """An HTTP-ready answer: status, JSON body, and whether it is a replay."""

    status: int
    body: bytes
    replayed: bool = False


def request_hash(*, method: str, path: str, body: Any) -> str:
    """SHA-256 over the method, path and the canonical (key-sorted) JSON of the decoded body."""
    canonical = msgspec.json.encode(body, order="sorted")
    return hashlib.sha256(f"{method} {path}\n".encode() + canonical).hexdigest()


class Idempotency:
    def __init__(self, *, render_error: RenderError, clock_now_ms: Callable[[], int]) -> None:
        self._render_error = render_error
        self._now_ms = clock_now_ms

    def render_error(self, error: ApssError) -> Outcome:
        status, body = self._render_error(error)
        return Outcome(status=status, body=body)

    def lookup(self, tx: Tx, *, merchant_id: str, request: IdempotencyRequest) -> Outcome | None:
        """The stored answer for this key, None for a new key; raises for reuse or in-flight."""
        row = keys.get_key_tx(tx, merchant_id=merchant_id, key=request.key)
        if row is None:
            return None
        # An erased player's stored answers lost the hash of a body that named them: the key replays.
        if row["request_hash"] not in (request.request_hash, keys.ERASED_REQUEST_HASH):
            raise IdempotencyKeyReused(
                "Keys for idempotent requests can only be used with the same parameters they were first used with."
            )
        if row["state"] == "running":
            raise IdempotencyKeyInUse("There is currently another in-progress request using this Idempotency-Key; retry later.")
        return Outcome(status=row["response_status"], body=bytes(row["response_body"]), replayed=True)

    def store(self, tx: Tx, *, merchant_id: str, request: IdempotencyRequest, outcome: Outcome) -> None:
        keys.insert_key(tx, merchant_id=merchant_id, key=request.key, request_hash=request.request_hash,
                        state="done", status=outcome.status, body=outcome.body, resume=None, now_ms=self._now_ms())

    def hold(self, tx: Tx, *, merchant_id: str, request: IdempotencyRequest, resume: str) -> None:
        keys.insert_key(tx, merchant_id=merchant_id, key=request.key, request_hash=request.request_hash,
                        state="running", status=None, body=None, resume=resume, now_ms=self._now_ms())

    def finish(self, tx: Tx, *, merchant_id: str, key: str, outcome: Outcome) -> None:
        keys.finish_key(tx, merchant_id=merchant_id, key=key, status=outcome.status, body=outcome.body)

    async def prune(self, db: Database, *, ttl_s: int, limit: int) -> int:
        """Forget finished keys older than `ttl_s` (at most `limit` a run)."""
        cutoff_ms = self._now_ms() - ttl_s * 1000
        return await db.write(lambda tx: keys.prune_keys(tx, created_before_ms=cutoff_ms, limit=limit))

    def finished(self, tx: Tx, *, merchant_id: str, key: str) -> Outcome | None:
        """The stored answer of a key that is no longer `running` (the completer finished it
        while its request was still out at a provider), else None."""
        row = keys.get_key_tx(tx, merchant_id=merchant_id, key=key)
        assert row is not None, "a two-step request holds its key"
        if row["state"] == "running":
            return None
        return Outcome(status=row["response_status"], body=bytes(row["response_body"]), replayed=True)

    def begin(self, tx: Tx, *, merchant_id: str, request: IdempotencyRequest | None, fn: Callable[[Tx], T],
              resume: Callable[[T], str]) -> Outcome | T:
        """The first transaction of a two-step request (an order, a refund): a replay, or `fn(tx)`
        with the key held `running` (finished by `finish`, or at restart by its `resume` step),
        or `fn`'s business refusal stored as the key's answer. An Outcome from `fn` means the
        request ended in this transaction: it is stored as the key's answer at once."""
        if request is not None:
            replay = self.lookup(tx, merchant_id=merchant_id, request=request)
            if replay is not None:
                return replay
        changes_before = tx.changes
        try:
            made = fn(tx)
        except ApssError as error:
            if request is None or tx.changes != changes_before:
                raise
            outcome = self.render_error(error)
            self.store(tx, merchant_id=merchant_id, request=request, outcome=outcome)
            return outcome
        if request is not None and isinstance(made, Outcome):
            self.store(tx, merchant_id=merchant_id, request=request, outcome=made)
        elif request is not None:
            self.hold(tx, merchant_id=merchant_id, request=request, resume=resume(made))
        return made

    async def run(
        self, db: Database, *, merchant_id: str, request: IdempotencyRequest | None,
        fn: Callable[[Tx], Any], success_status: int,
    ) -> Outcome:
        """Run a one-transaction operation once per key: `fn(tx)` returns the view to answer."""

        def transaction(tx: Tx) -> Outcome:
            if request is not None:
                replay = self.lookup(tx, merchant_id=merchant_id, request=request)
                if replay is not None:
                    return replay
            changes_before = tx.changes
            try:
                outcome = Outcome(status=success_status, body=encode(fn(tx)))
            except ApssError as error:
                # Checks come before writes; a function that fails after writing is replayed
                # away by the writer, and its error is not a stored response.
                if request is None or tx.changes != changes_before:
                    raise
                outcome = self.render_error(error)
            if request is not None:
                self.store(tx, merchant_id=merchant_id, request=request, outcome=outcome)
            return outcome

        return await db.write(transaction)
