"""Rate limits that hold across every server process and replica: a sliding-window counter whose
counts live in PostgreSQL (``rate_counters``, migration 0009), with no database round trip on the
hot path.

**What is counted.** One row per caller and minute: ``key:<key_id>`` (a key's limit,
``geotwin keys create --rate``), ``anon:<address>`` (callers without credentials, when
``GEOTWIN_ANONYMOUS_RATE_PER_MIN`` is set) and ``fail:<address>`` (unknown API keys presented
from one client address: after :data:`FAILED_KEYS_PER_MIN` of them in a minute, that address gets
429 for any key not already known to the process, without a database lookup). A request is allowed
while ``n(this minute) + n(last minute) × (the part of last minute still within the past 60 s)``
stays within the limit — the "sliding window counter" of the ``limits`` library (which has no
PostgreSQL storage), without the burst a fixed window allows at the turn of a minute.

**Claims.** A process does not ask the database per request: it *claims* several requests at once
from the shared row with one conditional upsert — atomic, so a claim that would pass the limit is
refused and changes nothing — and hands them out from memory. It claims about one second of its
own traffic for that caller (at least 1, at most a tenth of the limit, and no more than is left),
so a busy key costs about one statement per second per process. Claims count when they are made:
all processes together never allow more than the limit. Claimed requests still unused when the
minute ends are lost, so a caller may get up to a tenth of its limit less per process.

**Over the limit.** When a claim is refused the process computes, from the two counts, when the
next request can be allowed and refuses locally until then (429 with that Retry-After): a caller
hammering past its limit costs no database round trip either.

**Eviction.** Callers idle for two minutes are forgotten in memory; rows older than the previous
minute are deleted (by each process, once a minute, in the background).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from spatial_api import db

log = logging.getLogger(__name__)

WINDOW = 60.0  # seconds: limits are per minute
#: Unknown API keys one client address may present per minute (each costs a database lookup).
FAILED_KEYS_PER_MIN = 30
#: At most this share of a limit is claimed at once by one process.
MAX_CLAIM_SHARE = 10
SWEEP_EVERY = 10.0  # seconds between sweeps of idle callers in memory
PURGE_EVERY = 60.0  # seconds between deletions of old rows

_CLAIM = """
WITH p AS (SELECT coalesce((SELECT n FROM rate_counters WHERE who = %(who)s AND window_at = %(prev)s), 0) AS n),
claim AS (
    INSERT INTO rate_counters AS r (who, window_at, n)
    SELECT %(who)s, %(cur)s, %(size)s FROM p WHERE %(size)s + p.n * %(weight)s <= %(limit)s
    ON CONFLICT (who, window_at) DO UPDATE SET n = r.n + EXCLUDED.n
    WHERE r.n + EXCLUDED.n + (SELECT n FROM p) * %(weight)s <= %(limit)s
    RETURNING r.n
)
SELECT (SELECT n FROM claim), (SELECT n FROM p),
       coalesce((SELECT n FROM rate_counters WHERE who = %(who)s AND window_at = %(cur)s), 0)
"""


@dataclass
class _Caller:
    window: float  # start of the minute the allowance belongs to
    allowance: int = 0  # claimed from the shared row, not yet handed out
    blocked_until: float = 0.0  # known to be over the limit until then
    last_used: float = 0.0
    second: int = 0  # pace of this caller in this process: requests in this second / the last
    this_second: int = 0
    last_second: int = 0
    claiming: threading.Lock = field(default_factory=threading.Lock)  # one claim at a time


class SharedLimiter:
    """The rate limits of one database schema, as seen by this process (thread-safe)."""

    def __init__(self, settings, *, clock=time.time):
        self.settings = settings
        self.clock = clock
        self._callers: dict[str, _Caller] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0
        self._next_purge = 0.0
        self._purging = threading.Lock()
        self.statements = 0  # claims sent to the database (statistics, tests)

    # -- in memory ----------------------------------------------------------------------------

    @staticmethod
    def _window_of(now: float) -> float:
        return math.floor(now / WINDOW) * WINDOW

    def _caller(self, who: str, now: float) -> _Caller:
        """The caller's state, its allowance reset at the turn of a minute (call under _lock)."""
        c = self._callers.get(who)
        window = self._window_of(now)
        if c is None:
            c = self._callers[who] = _Caller(window)
        elif c.window != window:
            c.window, c.allowance = window, 0
        c.last_used = now
        return c

    def check(self, who: str, limit: int) -> float | None:
        """The fast path, no database: 0.0 = allowed (and counted); > 0 = refused, the seconds to
        wait; None = this process has nothing left to hand out: call :meth:`acquire` (in a thread)."""
        now = self.clock()
        if now >= self._next_sweep:
            self._housekeeping(now)
        with self._lock:
            c = self._caller(who, now)
            second = int(now)
            if second != c.second:
                c.last_second = c.this_second if second == c.second + 1 else 0
                c.second, c.this_second = second, 0
            c.this_second += 1
            if c.blocked_until > now:
                return c.blocked_until - now
            if c.allowance > 0:
                c.allowance -= 1
                return 0.0
        return None

    def blocked(self, who: str) -> float:
        """Seconds until ``who`` can be counted again, as known here (0.0: not known to be over its
        limit). Counts nothing."""
        with self._lock:
            c = self._callers.get(who)
            return max(0.0, c.blocked_until - self.clock()) if c else 0.0

    def callers(self) -> set[str]:
        with self._lock:
            return set(self._callers)

    # -- against the shared counts --------------------------------------------------------------

    def acquire(self, who: str, limit: int) -> float:
        """Blocking (call it in a worker thread): 0.0 = allowed and counted, else the seconds to
        wait. Claims from the shared row when this process has nothing left to hand out."""
        with self._lock:
            c = self._caller(who, self.clock())
        with c.claiming:  # requests arriving meanwhile wait for this claim instead of sending their own
            now = self.clock()
            with self._lock:
                c = self._caller(who, now)
                if c.blocked_until > now:
                    return c.blocked_until - now
                if c.allowance > 0:
                    c.allowance -= 1
                    return 0.0
                pace = max(c.this_second, c.last_second, 1)
                size = max(1, min(pace, limit // MAX_CLAIM_SHARE))
                window = c.window
            granted, current, previous = self._claim(who, window, now, size, limit)
            with self._lock:
                if granted:
                    if c.window == window:
                        c.allowance += granted - 1
                    return 0.0
                c.blocked_until = self._free_at(window, now, current, previous, limit)
                return c.blocked_until - now

    def _claim(self, who: str, window: float, now: float, size: int, limit: int) -> tuple[int, int, int]:
        """(granted, this minute's count, last minute's count): up to ``size`` requests claimed
        atomically, fewer when fewer are left, none when none are."""
        weight = max(0.0, 1.0 - (now - window) / WINDOW)
        params = {"who": who, "cur": _ts(window), "prev": _ts(window - WINDOW), "weight": weight, "limit": limit}
        with db.pool(self.settings).connection() as conn:
            while True:
                params["size"] = size
                self.statements += 1
                total, previous, current = conn.execute(_CLAIM, params).fetchone()
                if total is not None:
                    return size, total, previous
                if size == 1:  # checked against the row as it is now: the limit is reached
                    return 0, current, previous
                # fewer may still fit (``current`` is as of the statement's start: maybe too low)
                left = math.floor(limit - previous * weight - current)
                if left < 1:
                    return 0, current, previous
                size = max(1, min(left, size // 2))

    @staticmethod
    def _free_at(window: float, now: float, current: int, previous: int, limit: int) -> float:
        """When one more request fits: this minute, once enough of last minute has slid out of the
        window; else in the next minute, once enough of this minute has."""
        if current + 1 <= limit:
            if previous <= 0:
                return now + 0.05  # the counts moved under the claim: ask again soon
            share = 1.0 - (limit - current - 1) / previous  # of this minute that must have passed
            at = window + max(0.0, share) * WINDOW
            return max(at, now + 0.05)
        share = 1.0 - (limit - 1) / current if current > 0 else 0.0
        return max(window + WINDOW + max(0.0, share) * WINDOW, now + 0.05)

    # -- eviction -------------------------------------------------------------------------------

    def _housekeeping(self, now: float) -> None:
        with self._lock:
            if now < self._next_sweep:
                return
            self._next_sweep = now + SWEEP_EVERY
            self._forget_idle(now)
            purge = now >= self._next_purge
            if purge:
                self._next_purge = now + PURGE_EVERY
        if purge:
            threading.Thread(target=self._purge_quietly, args=(now,), name="rate-purge", daemon=True).start()

    def _forget_idle(self, now: float) -> None:
        idle = [who for who, c in self._callers.items()
                if c.last_used < now - 2 * WINDOW and c.blocked_until < now and not c.claiming.locked()]
        for who in idle:
            del self._callers[who]

    def purge(self, now: float | None = None) -> int:
        """Delete rows no limit reads any more (older than the previous minute); returns how many."""
        now = self.clock() if now is None else now
        with self._purging, db.pool(self.settings).connection() as conn:
            return conn.execute("DELETE FROM rate_counters WHERE window_at < %s",
                                (_ts(self._window_of(now) - WINDOW),)).rowcount

    def _purge_quietly(self, now: float) -> None:
        try:
            self.purge(now)
        except Exception:  # the next purge retries; limits keep working meanwhile
            log.exception("rate limits: old counters could not be deleted")

    def sweep(self) -> None:
        """Forget idle callers and delete old rows now (the server does this by itself)."""
        now = self.clock()
        with self._lock:
            self._forget_idle(now)
        self.purge(now)


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


_LIMITERS: dict[tuple, SharedLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter(settings) -> SharedLimiter:
    """The limiter of this process for a database and schema (every app in the process shares it)."""
    key = (settings.database_url, str(settings.home), settings.db_port, settings.db_schema)
    with _LIMITERS_LOCK:
        if key not in _LIMITERS:
            _LIMITERS[key] = SharedLimiter(settings)
        return _LIMITERS[key]
