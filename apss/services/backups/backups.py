"""Backups of the database file and their checks (`apss backup`, `apss restore`, the scheduled
`backup` job).

A copy counts only once it is checked: the integrity check, the foreign keys, and the ledger
check (every transaction balances, every balance equals its entries) on the copy itself.

The data key (`<database>.keys`, or `security.data_key` in config) seals secrets inside the
database, the personal-data keys (`<database>.privacy`, or `privacy.keys` in config) its players'
personal data. A copy beside its keys is a copy anyone who finds it can open, so the keys are
never written next to a copy: `--with-key PATH` writes the data key to PATH and the personal-data
keys to `PATH.privacy` where the operator says (refused in the copy's own folder), and scheduled
backups copy only the database.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import re
import shutil
from pathlib import Path

import msgspec

from apss.clock import Clock
from apss.config import Config
from apss.crypto import Keyring, keyring_from_file
from apss.services.money.ledger import Ledger
from apss.store import backup as store
from apss.store.db import Database
from apss.store.migrate import schema_versions

__all__ = ["BackupCheck", "BackupRefused", "Backups", "check_copy", "copy_key", "key_file", "personal_key_file", "restore",
           "take_backup"]

_NAME_RE = re.compile(r"^apss-(\d{8}T\d{6}\d{3}Z)\.sqlite$")


class BackupRefused(Exception):
    """A backup or restore that must not happen (a server on the file, a copy that fails its check)."""


class BackupCheck(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    problem: str | None
    schema_version: int
    counts: dict[str, int]
    ledger_transactions: int


async def check_copy(path: str, *, config: Config) -> BackupCheck:
    """Integrity, foreign keys, schema version and the ledger check, on the copy at `path`."""
    if not Path(path).is_file():
        raise BackupRefused(f"no backup at {path}")
    problem = await asyncio.to_thread(store.integrity_problem, path)
    if problem is not None:
        return BackupCheck(ok=False, problem=problem, schema_version=0, counts={}, ledger_transactions=0)
    current, latest = schema_versions(path)
    if current > latest:
        return BackupCheck(ok=False, problem=f"schema version {current} is newer than this APSS ({latest})",
                           schema_version=current, counts={}, ledger_transactions=0)
    counts = await asyncio.to_thread(store.row_counts, path)
    db = Database(path, read_connections_max=1)
    await db.start()
    try:
        ledger = await Ledger(db=db, clock=None, config=config.finance).check()
    finally:
        await db.close()
    return BackupCheck(ok=ledger.ok, problem=None if ledger.ok else f"ledger: {ledger.problem}", schema_version=current,
                       counts=counts, ledger_transactions=ledger.transactions)


async def take_backup(*, source: str, target: str, config: Config) -> BackupCheck:
    """Copy the (possibly serving) database `source` to `target` and check the copy; a copy that
    fails its check is removed and BackupRefused raised."""
    if Path(target).exists():
        raise BackupRefused(f"{target} exists: a backup never overwrites a file")
    if not Path(source).is_file():
        raise BackupRefused(f"no database at {source}")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    partial = f"{target}.partial"
    Path(partial).unlink(missing_ok=True)
    await asyncio.to_thread(functools.partial(store.copy_database, source, target=partial))
    checked = await check_copy(partial, config=config)
    if not checked.ok:
        Path(partial).unlink(missing_ok=True)
        raise BackupRefused(f"the copy failed its check: {checked.problem}")
    os.replace(partial, target)  # a file named like a backup is always a checked one
    return checked


def key_file(config: Config) -> Path | None:
    """The data key file, or None when the key is in config (security.data_key)."""
    return None if config.security.data_key else Path(f"{config.database.path}.keys")


def personal_key_file(config: Config) -> Path | None:
    """The personal-data keys' file, or None when the keys are in config (privacy.keys)."""
    return None if config.privacy.keys else Path(f"{config.database.path}.privacy")


def copy_key(config: Config, *, backup: str, key_target: str) -> list[str]:
    """Write the data key to `key_target` and the personal-data keys (when kept in their file) to
    `key_target.privacy`, never in the backup's own folder; returns the files written."""
    source = key_file(config)
    if source is None:
        raise BackupRefused("the data key is in config (security.data_key): back up the config instead")
    if Path(key_target).resolve().parent == Path(backup).resolve().parent:
        raise BackupRefused("the data key must not be written beside the copy it opens: choose another folder")
    personal = personal_key_file(config)
    pairs = [(source, Path(key_target))]
    if personal is not None and personal.exists():
        pairs.append((personal, Path(f"{key_target}.privacy")))
    for _, target in pairs:
        if target.exists():
            raise BackupRefused(f"{target} exists")
    Path(key_target).parent.mkdir(parents=True, exist_ok=True)
    for origin, target in pairs:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(origin.read_bytes())
    return [str(target) for _, target in pairs]


def configured_keyring(config: Config) -> Keyring:
    """The data key this config names (from config, or its existing key file)."""
    if config.security.data_key:
        return Keyring({config.security.data_key_id: base64.b64decode(config.security.data_key)},
                       primary=config.security.data_key_id)
    return keyring_from_file(key_file(config))


def key_opens(keyring: Keyring, path: str) -> bool:
    """Whether `keyring` opens what the copy at `path` sealed (true when it seals nothing)."""
    sample = store.sealed_sample(path)
    if sample is None:
        return True
    context, sealed = sample
    try:
        keyring.open(sealed, context=context)
    except Exception:  # a wrong key or a key id it does not hold: either way it cannot open the copy
        return False
    return True


async def restore(*, backup: str, config: Config, key_source: str | None = None) -> BackupCheck:
    """Put `backup` in place of config.database.path after checking it: refused while a server runs
    on the file, for a copy that fails its check, and when the data key cannot open the copy."""
    target = config.database.path
    lock = store.ServingLock.exclusive(target)
    if lock is None:
        raise BackupRefused(f"a server is running on {target}: stop it first")
    try:
        checked = await check_copy(backup, config=config)
        if not checked.ok:
            raise BackupRefused(f"the backup failed its check: {checked.problem}")
        if key_source is not None:
            keys = key_file(config)
            if keys is None:
                raise BackupRefused("the data key is in config (security.data_key): --with-key does not apply")
            staged = Path(f"{keys}.restoring")
            staged.unlink(missing_ok=True)
            shutil.copyfile(key_source, staged)
            os.chmod(staged, 0o600)
            if not key_opens(keyring_from_file(staged), backup):
                staged.unlink()
                raise BackupRefused(f"the key in {key_source} does not open the backup's sealed data")
            os.replace(staged, keys)
            _restore_personal_keys(config, Path(f"{key_source}.privacy"))
        elif key_file(config) is None or key_file(config).exists():
            if not key_opens(configured_keyring(config), backup):
                raise BackupRefused("this server's data key does not open the backup's sealed data: "
                                    "give the key it was taken with (--with-key PATH)")
        else:
            raise BackupRefused(f"no data key at {key_file(config)}: give the backup's key (--with-key PATH)")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(functools.partial(store.replace_database, backup, target=target))
        return checked
    finally:
        lock.release()


def _restore_personal_keys(config: Config, source: Path) -> None:
    """Put the personal-data keys written beside the data key (`--with-key PATH` wrote
    `PATH.privacy`) in place, when this config keeps them in their file."""
    target = personal_key_file(config)
    if target is None or not source.is_file():
        return
    staged = Path(f"{target}.restoring")
    staged.unlink(missing_ok=True)
    shutil.copyfile(source, staged)
    os.chmod(staged, 0o600)
    os.replace(staged, target)


class Backups:
    """The scheduled backup job: every `backup.every` a checked copy in `backup.dir`, named by the
    clock's time, keeping the newest `backup.keep`."""

    def __init__(self, *, config: Config, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._every_ms = config.backup.every_ms

    def _existing(self) -> list[Path]:
        directory = Path(self._config.backup.dir)
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir() if _NAME_RE.match(p.name))

    async def run_due(self) -> str | None:
        """Take a backup if one is due (none yet, or the newest is `every` old); return its path."""
        if not self._config.backup.dir:
            return None
        now_ms = self._clock.now_ms()
        existing = self._existing()
        if existing and now_ms - _taken_ms(existing[-1]) < self._every_ms:
            return None
        target = Path(self._config.backup.dir) / f"apss-{_stamp(now_ms)}.sqlite"
        await take_backup(source=self._config.database.path, target=str(target), config=self._config)
        for old in self._existing()[: -self._config.backup.keep]:
            old.unlink(missing_ok=True)
        return str(target)


def _stamp(ms: int) -> str:
    import datetime as dt

    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    return moment.strftime("%Y%m%dT%H%M%S") + f"{ms % 1000:03d}Z"


def _taken_ms(path: Path) -> int:
    import datetime as dt

    stamp = _NAME_RE.match(path.name).group(1)
    moment = dt.datetime.strptime(stamp[:15], "%Y%m%dT%H%M%S").replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp()) * 1000 + int(stamp[15:18])
