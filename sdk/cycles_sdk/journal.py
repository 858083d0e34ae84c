"""The on-disk settlement journal: unresolved commits survive process exit.

One JSON file per reservation, ``v2-<sha256 hex of the UTF-8 reservation
id>.json``, in a directory partitioned by server and principal: the tenant
when one is configured (so rotating the API key keeps finding the records),
else a digest of the API key. The API key itself is never written.

Every write is atomic (a private temporary file, fsync, rename, fsync of the
directory) and the files are created 0600 in a 0700 directory. A record that
cannot be parsed, or has a version this code does not know, is moved to
``quarantine/`` and reported (log warning and ``Journal.quarantined``); the
other records still replay.

Files named by the earlier scheme (the reservation id with every character
outside ``[A-Za-z0-9_.-]`` replaced by ``_``) may collide for distinct ids:
such a file is migrated to its standard name only when the id stored inside
it matches exactly, and is never deleted otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from cycles_sdk.config import CyclesConfig

log = logging.getLogger("cycles_sdk.journal")

RECORD_VERSION: Final = 2
Mode = Literal["commit", "event"]
_LEGACY_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class JournalRecord(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One unresolved settlement. ``mode`` moves from commit to event (never
    back) when the reservation turned out to be expired; ``not_before_ms`` is
    the absolute earliest retry time a 429 allowed."""

    version: int
    reservation_id: str
    mode: Mode
    idempotency_key: str
    commit: dict[str, Any]
    event: dict[str, Any]
    not_before_ms: int = 0
    created_at_ms: int = 0


def standard_filename(reservation_id: str) -> str:
    return "v2-" + hashlib.sha256(reservation_id.encode("utf-8")).hexdigest() + ".json"


def legacy_filename(reservation_id: str) -> str:
    return _LEGACY_UNSAFE.sub("_", reservation_id) + ".json"


def partition_name(config: CyclesConfig) -> str:
    if config.tenant:
        principal = "tenant:" + config.tenant
    else:
        principal = "key:" + hashlib.sha256(config.api_key.encode("utf-8")).hexdigest()
    return hashlib.sha256(f"{config.base_url.rstrip('/')}\n{principal}".encode()).hexdigest()[:32]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Journal:
    directory: Path
    quarantined: list[Path] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def for_config(cls, config: CyclesConfig) -> Journal:
        return cls(config.journal_path() / partition_name(config))

    def _ensure_dir(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path_for(self, reservation_id: str) -> Path:
        return self.directory / standard_filename(reservation_id)

    def write(self, record: JournalRecord) -> None:
        """Atomically (re)write a record; raises OSError when the disk refuses."""
        self._ensure_dir()
        target = self.path_for(record.reservation_id)
        temporary = self.directory / f".tmp-{secrets.token_hex(8)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(msgspec.json.encode(record))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, reservation_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(reservation_id).unlink()

    def _parse(self, path: Path) -> JournalRecord | None:
        """The record in ``path``; a malformed or unknown-version one is quarantined."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            record = msgspec.json.decode(data, type=JournalRecord)
            if record.version != RECORD_VERSION:
                raise ValueError(f"unsupported record version {record.version}")
        except (msgspec.DecodeError, ValueError) as error:
            self._quarantine(path, str(error))
            return None
        return record

    def _quarantine(self, path: Path, why: str) -> None:
        target_dir = self.directory / "quarantine"
        target_dir.mkdir(mode=0o700, exist_ok=True)
        target = target_dir / f"{path.name}.{secrets.token_hex(4)}"
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return
        with self._lock:
            self.quarantined.append(target)
        log.warning("cycles journal: quarantined %s (%s) as %s", path.name, why, target)

    def load(self, reservation_id: str) -> JournalRecord | None:
        """The record of one reservation, migrating a matching legacy file."""
        record = self._parse(self.path_for(reservation_id))
        if record is not None:
            return record
        legacy = self.directory / legacy_filename(reservation_id)
        if legacy.name.startswith("v2-") or not legacy.exists():
            return None
        return self._migrate(legacy, reservation_id)

    def _migrate(self, legacy: Path, expected_id: str | None) -> JournalRecord | None:
        record = self._parse(legacy)
        if record is None or (expected_id is not None and record.reservation_id != expected_id):
            return None
        if legacy_filename(record.reservation_id) != legacy.name:
            return None
        self.write(record)
        legacy.unlink()
        return record

    def pending(self) -> list[JournalRecord]:
        """Every valid record, oldest first (legacy files migrated on the way)."""
        if not self.directory.is_dir():
            return []
        records: list[JournalRecord] = []
        for path in sorted(self.directory.iterdir()):
            if not path.is_file() or path.name.startswith(".tmp-") or path.suffix != ".json":
                continue
            if path.name.startswith("v2-"):
                record = self._parse(path)
                if record is not None and path.name != standard_filename(record.reservation_id):
                    self._quarantine(path, "file name does not match its reservation id")
                    record = None
            else:
                record = self._migrate(path, None)
            if record is not None:
                records.append(record)
        records.sort(key=lambda r: r.created_at_ms)
        return records
