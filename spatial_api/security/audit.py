"""The audit log: who did or read what, when, from where.

Writes are recorded synchronously — the row is committed before the response leaves — so an
audit entry exists for every accepted or refused write. Reads of restricted layers (a map session
fetches hundreds of tiles) go through a small in-process queue written in batches by a background
thread every half second: every read is recorded, without a database round trip per tile.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from datetime import datetime

from spatial_api import db

log = logging.getLogger(__name__)

_INSERT = ("INSERT INTO audit_log (at, principal, role, via, action, target, method, status, client, detail) "
           "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)")


@dataclass
class Entry:
    at: datetime
    principal: str
    role: str
    via: str
    action: str
    target: str
    method: str | None = None
    status: int | None = None
    client: str | None = None
    detail: dict = field(default_factory=dict)

    def row(self) -> tuple:
        return (self.at, self.principal, self.role, self.via, self.action, self.target, self.method, self.status,
                self.client, json.dumps(self.detail, ensure_ascii=False, default=str))


def record(conn, entry: Entry) -> None:
    """Record in the caller's transaction."""
    conn.execute(_INSERT, entry.row())


class AuditWriter:
    """One per process and database schema."""

    def __init__(self, settings):
        self.settings = settings
        self._queue: queue.Queue[Entry] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def write_now(self, entry: Entry) -> None:
        with db.pool(self.settings).connection() as conn:
            record(conn, entry)

    def enqueue(self, entry: Entry) -> None:
        self._queue.put(entry)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                    self._thread.start()

    def flush(self) -> int:
        """Write what is queued now; returns how many entries."""
        batch: list[Entry] = []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if batch:
            try:
                with db.pool(self.settings).connection() as conn:
                    with conn.cursor() as cur:
                        cur.executemany(_INSERT, [e.row() for e in batch])
            except Exception:
                log.exception("audit: %d read entries could not be written; retrying", len(batch))
                for e in batch:
                    self._queue.put(e)
                return 0
        return len(batch)

    def _run(self) -> None:
        import time

        while True:
            time.sleep(0.5)
            self.flush()
