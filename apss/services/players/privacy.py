"""Privacy use cases: a player's export and erasure, the erased ids' pseudonyms on lookup, the
re-application of erasures after a backup restore, the retention of IPs and device ids, the
re-sealing of personal data after a key rotation, and the audit log.

Where a player's data lives is one registry (store/privacy.py): a table joins export, erasure,
retention and rotation by adding its entry there, and nothing here changes.

Erasure (`erase`): the record goes first to `<database>.erasures` beside the database (fsynced:
a restored backup does not hold it) and to the `erasures` table; then every registered table is
rewritten in chunks of at most `database.chunk_rows_max` rows per transaction (the player id
becomes `anon_<HMAC>`, personal fields are cleared, JSON copies scrubbed); the last transaction
marks it done and stores the idempotent answer; then the WAL is checkpointed and truncated, and
with `secure_delete` on no freed page keeps the erased bytes. Amounts and the ledger are never
touched. At start (`start`) every recorded erasure the database does not hold as done (a restored
backup, a crash mid-way) is applied again: the player ids found in the registered tables are
hashed and those matching a record are erased.

The erased ids are kept in memory (lookups by an erased id answer from the pseudonym's records).
On PostgreSQL an erasure marks the cache "privacy" changed in the transaction that records it
(store/caches.py), and the other instances add it to their set (`reload`; services/ops/
cache_sync.py): an order or lookup there by the erased id is then recorded under the pseudonym.
(The `<database>.erasures` journal is per instance: another instance completes its own from the
`erasures` table at its next start.)
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from apss.clock import Clock, format_rfc3339
from apss.config import PrivacyConfig
from apss.crypto import PersonalData, hash_secret
from apss.domain.privacy import decode_blob, scrub_json
from apss.errors import Conflict
from apss.ids import new_id
from apss.services.idempotency import (
    Idempotency,
    IdempotencyRequest,
    Outcome,
    request_hash,
)
from apss.services.paging import page_of
from apss.store import caches
from apss.store import privacy as store
from apss.store.db import Database, Tx

__all__ = ["AuditEntryList", "AuditEntryView", "AuditLog", "ErasureJournal", "Privacy", "key_ref"]

log = logging.getLogger("apss.privacy")

_EXPORT_ROWS_MAX = 10_000  # per table; `truncated` says when a table had more
_RESCAN_PAGE = 1000  # distinct player ids read per query when re-applying erasures at start


def key_ref(token: str, *, actor: str) -> str:
    """Who acted, without the key: its kind (`sk_test_`, `sk_live_`, `adm_`) and 8 hex of its SHA-256."""
    kind = "adm_" if actor == "admin" else ("sk_live_" if token.startswith("sk_live_") else "sk_test_")
    return kind + hash_secret(token if len(token) >= 16 else token.ljust(16, "\0"))[:8]


class ErasureJournal:
    """The erasure records kept outside the database (JSON lines of merchant id and pseudonym;
    never an original id), fsynced before an erasure writes anything."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> set[tuple[str, str]]:
        if not self.path.exists():
            return set()
        found: set[tuple[str, str]] = set()
        for line in self.path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                found.add((entry["merchant_id"], entry["pseudonym"]))
        return found

    def append(self, merchant_id: str, pseudonym: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps({"merchant_id": merchant_id, "pseudonym": pseudonym}) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


class ErasureView(msgspec.Struct, frozen=True, kw_only=True):
    player_id: str  # the id the records carry now: the pseudonym (the original is never stored)
    erased: bool
    pseudonym: str


class KeysView(msgspec.Struct, frozen=True, kw_only=True):
    primary_key_id: str
    key_ids: list[str]


class Privacy:
    def __init__(self, *, db: Database, clock: Clock, personal: PersonalData, config: PrivacyConfig,
                 idempotency: Idempotency, journal: ErasureJournal, keys_path: Path | None, chunk_rows_max: int,
                 wake_rotation: Callable[[], None]) -> None:
        assert chunk_rows_max >= 1
        self._db = db
        self._clock = clock
        self.personal = personal
        self._config = config
        self._idempotency = idempotency
        self._journal = journal
        self._keys_path = keys_path  # None: the keys come from config (rotate them there)
        self._chunk = chunk_rows_max
        self._wake_rotation = wake_rotation
        self._erased: set[tuple[str, str]] = set()
        self._journaled: set[tuple[str, str]] = set()
        self._rotation_primary: str | None = None
        self._rotation_after: dict[tuple[str, str], str] = {}

    # -- lookups -------------------------------------------------------------------------------
    def resolve(self, merchant_id: str, player_id: str) -> str:
        """The id a player's records carry: the pseudonym once the player was erased."""
        pseudonym = self.personal.pseudonym(merchant_id, player_id)
        return pseudonym if (merchant_id, pseudonym) in self._erased else player_id

    def is_erased(self, merchant_id: str, player_id: str) -> bool:
        return (merchant_id, player_id) in self._erased or (merchant_id, self.personal.pseudonym(merchant_id, player_id)) in self._erased

    # -- start: erasures applied again -----------------------------------------------------------
    async def start(self) -> int:
        """Apply again every recorded erasure the database does not hold as done; returns how many."""
        journal = self._journal.read()
        rows = await store.erasures(self._db)
        done = {(r["merchant_id"], r["pseudonym"]) for r in rows if r["status"] == "done"}
        for entry in {(r["merchant_id"], r["pseudonym"]) for r in rows} - journal:
            self._journal.append(*entry)  # a journal lost or older than the database: completed from it
        self._erased = journal | {(r["merchant_id"], r["pseudonym"]) for r in rows}
        self._journaled = set(self._erased)
        todo = journal - done
        by_merchant: dict[str, set[str]] = {}
        for merchant_id, pseudonym in todo:
            by_merchant.setdefault(merchant_id, set()).add(pseudonym)
        applied = 0
        for merchant_id, wanted in by_merchant.items():
            originals = await self._find_originals(merchant_id, wanted)
            for original in originals:
                await self._erase_rows(merchant_id, original, self.personal.pseudonym(merchant_id, original))
            for pseudonym in wanted:
                await self._db.write(lambda tx, p=pseudonym: self._finish_record(tx, merchant_id, p))
            applied += len(wanted)
        if applied:
            await self._db.checkpoint_truncate()
            log.info("applied %d recorded erasure(s) again at start", applied)
        return applied

    async def reload(self, merchant_id: str | None, generation: int = 0) -> None:
        """The cache "privacy" changed on another instance (an erasure recorded there): add the
        recorded erasures to the set of erased ids (erasures are never undone)."""
        self._erased |= {(r["merchant_id"], r["pseudonym"]) for r in await store.erasures(self._db)}

    def _finish_record(self, tx: Tx, merchant_id: str, pseudonym: str) -> None:
        now_ms = self._clock.now_ms()
        store.record_erasure_tx(tx, merchant_id=merchant_id, pseudonym=pseudonym, now_ms=now_ms)
        store.finish_erasure_tx(tx, merchant_id=merchant_id, pseudonym=pseudonym, now_ms=now_ms)

    async def _find_originals(self, merchant_id: str, wanted: set[str]) -> set[str]:
        found: set[str] = set()
        for entry in store.PLAYER_COLUMNS:
            after = ""
            while True:
                players = await store.distinct_players(self._db, entry, merchant_id=merchant_id, after=after,
                                                       limit=_RESCAN_PAGE)
                found |= {p for p in players if self.personal.pseudonym(merchant_id, p) in wanted}
                if len(players) < _RESCAN_PAGE:
                    break
                after = players[-1]
        return found

    # -- erasure -------------------------------------------------------------------------------
    async def erase(self, *, merchant_id: str, player_id: str, idempotency_key: str | None) -> Outcome:
        if (merchant_id, player_id) in self._erased:  # named by its pseudonym: erased already
            pseudonym = player_id
        else:
            pseudonym = self.personal.pseudonym(merchant_id, player_id)
        # The request hash covers the pseudonymous path: a stored hash never derives from the id.
        if idempotency_key is not None and pseudonym != player_id:  # a key naming the player is stored pseudonymous
            idempotency_key = idempotency_key.replace(player_id, pseudonym)
        request = None if idempotency_key is None else IdempotencyRequest(
            key=idempotency_key, request_hash=request_hash(method="POST", path=f"/v1/players/{pseudonym}/erase", body=None))
        if (merchant_id, pseudonym) not in self._journaled:
            self._journal.append(merchant_id, pseudonym)
            self._journaled.add((merchant_id, pseudonym))
        now_ms = self._clock.now_ms()

        def record(tx: Tx) -> None:
            store.record_erasure_tx(tx, merchant_id=merchant_id, pseudonym=pseudonym, now_ms=now_ms)
            caches.changed(tx, "privacy", merchant_id)

        await self._db.write(record)
        self._erased.add((merchant_id, pseudonym))
        if pseudonym != player_id:
            await self._erase_rows(merchant_id, player_id, pseudonym)

        def finish(tx: Tx) -> Outcome:
            if request is not None:
                replay = self._idempotency.lookup(tx, merchant_id=merchant_id, request=request)
                if replay is not None:
                    return replay
            store.finish_erasure_tx(tx, merchant_id=merchant_id, pseudonym=pseudonym, now_ms=self._clock.now_ms())
            outcome = Outcome(status=200, body=msgspec.json.encode(ErasureView(player_id=pseudonym, erased=True,
                                                                                pseudonym=pseudonym)))
            if request is not None:
                self._idempotency.store(tx, merchant_id=merchant_id, request=request, outcome=outcome)
            return outcome

        outcome = await self._db.write(finish)
        if not await self._db.checkpoint_truncate():
            log.warning("the WAL could not be truncated after an erasure (readers busy); the next one retries")
        return outcome

    async def _erase_rows(self, merchant_id: str, player_id: str, pseudonym: str) -> None:
        """Every registered table, in chunks of at most chunk_rows_max rows per transaction."""
        assert player_id != pseudonym
        for cleared in store.CLEARED:  # before the orders are renamed: they find the rows
            while await self._db.write(lambda tx, c=cleared: store.clear_linked_chunk_tx(
                    tx, c, player=(merchant_id, player_id), limit=self._chunk)) >= self._chunk:
                pass
        for entry in store.PLAYER_COLUMNS:
            while True:
                changed = await self._db.write(lambda tx, e=entry: store.erase_player_chunk_tx(
                    tx, e, merchant_id=merchant_id, player_id=player_id, pseudonym=pseudonym, limit=self._chunk))
                if changed < self._chunk:
                    break
        for blob in store.PLAYER_BLOBS:
            after: Any = "" if blob.cursor != "seq" else -1
            while True:
                after, seen = await self._db.write(lambda tx, b=blob, a=after: self._scrub_chunk(
                    tx, b, merchant_id=merchant_id, player_id=player_id, pseudonym=pseudonym, after=a))
                if seen < self._chunk:
                    break

    def _scrub_chunk(self, tx: Tx, blob: store.PlayerBlob, *, merchant_id: str, player_id: str, pseudonym: str,
                     after: Any) -> tuple[Any, int]:
        rows = store.candidate_blobs_tx(tx, blob, merchant_id=merchant_id, needle=player_id, after=after,
                                        limit=self._chunk)
        for row in rows:
            raw = row["_v"]
            decoded = decode_blob(raw)
            new_value, own = scrub_json(decoded, player_id, pseudonym) if decoded is not None else (None, False)
            key_text = None
            if blob.key_text and player_id in row["_k"]:
                replaced = row["_k"].replace(player_id, pseudonym) if own else names_id(row["_k"], player_id, pseudonym)
                key_text = replaced if replaced != row["_k"] else None
            if not own and key_text is None:
                continue
            encoded: Any = msgspec.json.encode(new_value)
            if not isinstance(raw, bytes):
                encoded = encoded.decode()
            store.update_blob_tx(tx, blob, merchant_id=merchant_id, cursor_value=row["_c"], value=encoded,
                                 key_text=key_text, erased_hash=own)
        return (rows[-1]["_c"] if rows else after), len(rows)

    # -- export ----------------------------------------------------------------------------------
    async def export(self, *, merchant_id: str, player_id: str) -> bytes:
        resolved = self.resolve(merchant_id, player_id)
        erased = self.is_erased(merchant_id, player_id)
        body: dict[str, Any] = {"player_id": resolved, "merchant_id": merchant_id, "erased": erased,
                                "exported_at": format_rfc3339(self._clock.now_ms())}
        truncated: list[str] = []
        for entry in store.PLAYER_COLUMNS:
            if not entry.export:
                continue
            rows = await store.player_rows(self._db, entry, merchant_id=merchant_id, player_id=resolved,
                                           limit=_EXPORT_ROWS_MAX + 1)
            body[entry.table] = self._opened(entry.table, rows[:_EXPORT_ROWS_MAX])
            if len(rows) > _EXPORT_ROWS_MAX:
                truncated.append(entry.table)
        for linked in store.LINKED:
            rows = await store.linked_rows(self._db, linked, merchant_id=merchant_id, player_id=resolved,
                                           limit=_EXPORT_ROWS_MAX + 1)
            body[linked.table] = self._opened(linked.table, rows[:_EXPORT_ROWS_MAX])
            if len(rows) > _EXPORT_ROWS_MAX:
                truncated.append(linked.table)
        for blob in store.PLAYER_BLOBS:
            if blob.export_as is None:
                continue
            rows = await store.blob_rows(self._db, blob, merchant_id=merchant_id, needle=resolved,
                                         limit=_EXPORT_ROWS_MAX + 1)
            named = []
            for row in rows[:_EXPORT_ROWS_MAX]:
                decoded = decode_blob(row[blob.column])
                if decoded is not None and scrub_json(decoded, resolved, resolved + "?")[1]:
                    named.append({**row, blob.column: decoded})
            body[blob.export_as] = named
            if len(rows) > _EXPORT_ROWS_MAX:
                truncated.append(blob.export_as)
        body["truncated"] = truncated
        return msgspec.json.encode(body)

    def _opened(self, table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows with their sealed personal columns opened (the export is the player's own data); a
        column that replaced a clear one is shown under the clear one's name."""
        sealed = [s for s in store.SEALED_COLUMNS if s.table == table]
        if not sealed:
            return rows
        for row in rows:
            for column in sealed:
                value = row.get(column.column)
                if value:
                    value = self.personal.open(value, context=column.context(row[column.id_column]))
                if column.legacy:
                    row.pop(column.column, None)
                    row[column.legacy] = value or row.get(column.legacy)
                else:
                    row[column.column] = value
        return rows

    # -- retention -------------------------------------------------------------------------------
    async def expire_retained(self) -> int:
        """Erase IPs and device ids older than privacy.retention_days (chunked); returns how many."""
        before_ms = self._clock.now_ms() - self._config.retention_days * 86_400_000
        chunks: list[Callable[[Tx], int]] = [
            *(lambda tx, e=e: store.expire_sealed_tx(tx, e, before_ms=before_ms, limit=self._chunk)
              for e in store.SEALED_COLUMNS if e.retained),
            *(lambda tx, c=c: store.clear_linked_chunk_tx(tx, c, before_ms=before_ms, limit=self._chunk)
              for c in store.CLEARED),
            *(lambda tx, r=r: store.expire_rows_tx(tx, r, before_ms=before_ms, limit=self._chunk)
              for r in store.RETAINED_ROWS)]
        total = 0
        for chunk in chunks:  # each until a chunk comes back short
            while (changed := await self._db.write(chunk)) >= self._chunk:
                total += changed
            total += changed
        if total:
            await self._db.checkpoint_truncate()
        return total

    # -- key rotation ----------------------------------------------------------------------------
    async def rotate_key(self) -> KeysView:
        """A new primary key for personal data (generated keys only); the rotation job re-seals."""
        if self._keys_path is None:
            raise Conflict("The personal data keys come from config (privacy.keys): add a key there and make it "
                           "privacy.primary_key_id.", code="privacy_keys_in_config")
        numbers = [int(k[1:]) for k in self.personal.key_ids if k[:1] == "p" and k[1:].isdigit()]
        kid = f"p{max(numbers, default=0) + 1}"
        key = os.urandom(32)
        stored = json.loads(self._keys_path.read_text())
        stored["keys"][kid] = base64.b64encode(key).decode()
        stored["primary"] = kid
        write_private_json(self._keys_path, stored)
        self.personal.rotate(kid, key)
        self._wake_rotation()
        return self.keys_view()

    def keys_view(self) -> KeysView:
        return KeysView(primary_key_id=self.personal.primary, key_ids=sorted(self.personal.key_ids))

    async def reseal_due(self) -> int:
        """Re-seal, in transactions of at most privacy.rotation_batch_max values, what an older key
        sealed, and seal what a legacy clear column still holds (rows written before the column
        was sealed: the first pass after an upgrade); one pass over each sealed column per primary
        key. Returns how many it re-sealed or sealed. After sealing clear values the WAL is
        checkpointed, so no copy of them stays in it."""
        primary = self.personal.primary
        if self._rotation_primary != primary:
            self._rotation_primary = primary
            self._rotation_after = {(e.table, e.column): "" for e in store.SEALED_COLUMNS}
        batch = self._config.rotation_batch_max
        total, sealed_clear = 0, 0
        for entry in store.SEALED_COLUMNS:
            slot = (entry.table, entry.column)
            if slot not in self._rotation_after:
                continue

            def chunk(tx: Tx, e: store.SealedColumn = entry,
                      after: str = self._rotation_after[slot]) -> tuple[int, int, str | None]:
                rows = store.sealed_chunk_tx(tx, e, after=after, limit=batch)
                count, clear = 0, 0
                for row in rows:
                    context = e.context(row["id"])
                    if row["v"] is None:  # only the legacy clear value
                        value = self.personal.seal(row["l"], context=context)
                        clear += 1
                    elif row["l"] is not None or not self.personal.is_current(row["v"]):
                        value = self.personal.reseal(row["v"], context=context)
                    else:
                        continue
                    store.set_sealed_tx(tx, e, row_id=row["id"], value=value)
                    count += 1
                return count, clear, (rows[-1]["id"] if len(rows) == batch else None)

            count, clear, after = await self._db.write(chunk)
            total += count
            sealed_clear += clear
            if after is None:
                del self._rotation_after[slot]  # this column is done for this primary
            else:
                self._rotation_after[slot] = after
        if sealed_clear and not await self._db.checkpoint_truncate():
            log.warning("the WAL could not be truncated after sealing clear values (readers busy); the next pass retries")
        return total

    @property
    def rotation_pending(self) -> bool:
        return self._rotation_primary != self.personal.primary or bool(self._rotation_after)


def names_id(text: str, player_id: str, pseudonym: str) -> str:
    """`text` with the id replaced where it stands alone (not inside a longer letter-digit run:
    `order-p1-0` names p1, `order-p10-0` does not)."""
    pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(player_id)}(?![A-Za-z0-9])")
    return pattern.sub(pseudonym, text)


def write_private_json(path: Path, value: dict) -> None:
    """Replace `path` atomically with `value` as JSON, mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(value, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class AuditEntryView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    actor: str
    merchant_id: str | None
    key_ref: str
    action: str
    object_id: str | None
    status_code: int
    ip: str | None
    created_at: str


class AuditEntryList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[AuditEntryView]
    has_more: bool
    next_cursor: str | None


class AuditLog:
    """Who did what, when, from where: one row per changing merchant or admin request."""

    def __init__(self, *, db: Database, clock: Clock, personal: PersonalData) -> None:
        self._db = db
        self._clock = clock
        self._personal = personal
        self._ip_column = next(s for s in store.SEALED_COLUMNS if s.table == "audit_log")

    def record_tx(self, tx: Tx, *, actor: str, merchant_id: str | None, key_ref: str, action: str,
                  object_id: str | None, status_code: int, ip: str | None) -> str:
        assert actor in ("merchant", "admin") and action
        audit_id = new_id("aud")
        sealed = self._personal.seal(ip, context=self._ip_column.context(audit_id)) if ip else None
        store.insert_audit(tx, {"id": audit_id, "actor": actor, "merchant_id": merchant_id, "key_ref": key_ref,
                                "action": action, "object_id": object_id, "status_code": status_code,
                                "ip_sealed": sealed, "created_at_ms": self._clock.now_ms()})
        return audit_id

    async def record(self, **fields: Any) -> str:
        return await self._db.write(lambda tx: self.record_tx(tx, **fields))

    async def list(self, *, after_id: str | None, limit: int, merchant_id: str | None = None, action: str | None = None,
                   actor: str | None = None, object_id: str | None = None, since_ms: int | None = None,
                   until_ms: int | None = None) -> tuple[list[AuditEntryView], bool]:
        rows = await store.list_audit(self._db, after_id=after_id, limit=limit + 1, merchant_id=merchant_id,
                                      action=action, actor=actor, object_id=object_id, since_ms=since_ms,
                                      until_ms=until_ms)
        return page_of(rows, limit, self._view)

    def _view(self, row: Any) -> AuditEntryView:
        ip = row["ip_sealed"]
        return AuditEntryView(
            id=row["id"], actor=row["actor"], merchant_id=row["merchant_id"], key_ref=row["key_ref"],
            action=row["action"], object_id=row["object_id"], status_code=row["status_code"],
            ip=self._personal.open(ip, context=self._ip_column.context(row["id"])) if ip else None,
            created_at=format_rfc3339(row["created_at_ms"]))
