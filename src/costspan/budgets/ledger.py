"""Budget ledgers: where spend per (budget, window) is counted, so that every replica sees the same numbers.

One small interface, three backends:

- ``MemoryLedger``: one process (tests, single-worker apps).
- ``SQLiteLedger``: one host, any number of processes; a table in the embedded store file by default.
- ``RedisLedger``: many replicas; reserve and settle are Lua scripts, so each is one atomic step on the server,
  and keys expire with their window.

Amounts are integers in nano-dollars (1e-9 USD) so that every backend adds exactly and Redis can use ``HINCRBY``.
Each key holds two counters: ``used`` (settled spend plus open reservations, what admission compares with the
cap) and ``settled`` (what calls really cost, what alerts and reports read).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any, Protocol

NANO_PER_USD = 10**9


def to_nano(usd: Decimal) -> int:
    """Dollars to nano-dollars, rounded up: a budget never under-counts."""
    return int((usd * NANO_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def to_usd(nano: int) -> Decimal:
    return Decimal(nano) / NANO_PER_USD


@dataclass(frozen=True, slots=True)
class Reservation:
    """Worst-case spend held for one call until it settles."""

    key: str
    amount: int
    expires_at: float  # unix seconds: the end of the key's window, plus grace


@dataclass(frozen=True, slots=True)
class Totals:
    used: int  # settled spend plus open reservations
    settled: int


class Ledger(Protocol):
    """Atomic per-key counters. Any method may raise when the backend is unreachable; the guard applies its
    fail-open or fail-closed policy."""

    # True when a method may wait on I/O (a file lock, the network): calls from AsyncOpenAI then run it off the
    # event loop, so that other tasks keep running meanwhile.
    blocking: bool

    def reserve(self, key: str, amount: int, cap: int, expires_at: float) -> tuple[Reservation | None, int]:
        """Add ``amount`` to the key's ``used`` unless that would cross ``cap`` (or the key is already at it).

        Returns the reservation (None when denied) and ``used`` as the decision saw it.
        """
        ...

    def settle(self, reservation: Reservation, actual: int) -> int:
        """Replace the reservation by the call's real cost; returns the key's ``settled`` total."""
        ...

    def claim_alert(self, key: str, level: str, expires_at: float) -> bool:
        """True exactly once per (key, level) until it expires: alerts fire once per window, across replicas."""
        ...

    def totals(self, key: str) -> Totals: ...

    def close(self) -> None: ...


def _denied(used: int, amount: int, cap: int) -> bool:
    # A call that cannot be priced reserves 0; it is still refused once the window is used up.
    return used >= cap or used + amount > cap


class MemoryLedger:
    """In-process ledger. Expired windows are dropped lazily."""

    blocking = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, list[int]] = {}  # key -> [used, settled]
        self._expiry: dict[str, float] = {}
        self._alerts: dict[tuple[str, str], float] = {}

    def _purge(self, now: float) -> None:
        for key in [k for k, at in self._expiry.items() if at <= now]:
            del self._expiry[key]
            self._counters.pop(key, None)
        for alert in [a for a, at in self._alerts.items() if at <= now]:
            del self._alerts[alert]

    def reserve(self, key: str, amount: int, cap: int, expires_at: float) -> tuple[Reservation | None, int]:
        with self._lock:
            if key not in self._counters:
                self._purge(time.time())
            counters = self._counters.setdefault(key, [0, 0])
            used = counters[0]
            if _denied(used, amount, cap):
                return None, used
            counters[0] += amount
            self._expiry[key] = expires_at
            return Reservation(key, amount, expires_at), used

    def settle(self, reservation: Reservation, actual: int) -> int:
        with self._lock:
            counters = self._counters.get(reservation.key)
            if counters is None:  # the window expired while the call ran
                return 0
            counters[0] += actual - reservation.amount
            counters[1] += actual
            return counters[1]

    def claim_alert(self, key: str, level: str, expires_at: float) -> bool:
        with self._lock:
            if (key, level) in self._alerts:
                return False
            self._alerts[(key, level)] = expires_at
            return True

    def totals(self, key: str) -> Totals:
        with self._lock:
            used, settled = self._counters.get(key, (0, 0))
            return Totals(used, settled)

    def close(self) -> None:
        pass


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS costspan_budget_ledger (
    key TEXT PRIMARY KEY,
    used INTEGER NOT NULL,
    settled INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS costspan_budget_alerts (
    key TEXT NOT NULL,
    level TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, level)
);
"""

# One statement is one atomic write in SQLite: the check against the cap and the increment cannot interleave with
# another process's, and no read lock is ever upgraded (so no SQLITE_BUSY deadlock between readers-turned-writers).
_SQLITE_RESERVE = """
INSERT INTO costspan_budget_ledger (key, used, settled, expires_at) VALUES (:key, :amount, 0, :expires_at)
ON CONFLICT (key) DO UPDATE SET used = used + :amount
WHERE used < :cap AND used + :amount <= :cap
RETURNING used - :amount
"""


class SQLiteLedger:
    """Ledger in a SQLite file shared by the processes of one host (default: the embedded store)."""

    blocking = True

    BUSY_TIMEOUT_MS = 10_000

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            from costspan.store.paths import default_store_path

            path = default_store_path()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._purged: set[float] = set()
        with self._connection() as db:
            db.executescript(_SQLITE_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # Autocommit: every statement below is its own transaction.
            db = sqlite3.connect(self.path, timeout=self.BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def reserve(self, key: str, amount: int, cap: int, expires_at: float) -> tuple[Reservation | None, int]:
        if amount > cap or cap <= 0:
            return None, self.totals(key).used
        db = self._connection()
        if expires_at not in self._purged:  # a new window: drop the rows of windows that ended
            self._purged.add(expires_at)
            now = time.time()
            db.execute("DELETE FROM costspan_budget_ledger WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM costspan_budget_alerts WHERE expires_at <= ?", (now,))
        # fetchall: the statement must run to completion, or its write lock outlives this call.
        rows = db.execute(
            _SQLITE_RESERVE, {"key": key, "amount": amount, "cap": cap, "expires_at": expires_at}
        ).fetchall()
        if not rows:
            return None, self.totals(key).used
        return Reservation(key, amount, expires_at), int(rows[0][0])

    def settle(self, reservation: Reservation, actual: int) -> int:
        rows = (
            self._connection()
            .execute(
                "UPDATE costspan_budget_ledger SET used = used + ?, settled = settled + ? WHERE key = ? "
                "RETURNING settled",
                (actual - reservation.amount, actual, reservation.key),
            )
            .fetchall()
        )
        return int(rows[0][0]) if rows else 0

    def claim_alert(self, key: str, level: str, expires_at: float) -> bool:
        cursor = self._connection().execute(
            "INSERT OR IGNORE INTO costspan_budget_alerts (key, level, expires_at) VALUES (?, ?, ?)",
            (key, level, expires_at),
        )
        return cursor.rowcount == 1

    def totals(self, key: str) -> Totals:
        row = (
            self._connection()
            .execute("SELECT used, settled FROM costspan_budget_ledger WHERE key = ?", (key,))
            .fetchone()
        )
        return Totals(int(row[0]), int(row[1])) if row else Totals(0, 0)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


# KEYS[1] = the counter hash. ARGV = amount, cap, expires_at (unix seconds).
_REDIS_RESERVE = """
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local amount = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
if used >= cap or used + amount > cap then
  return {0, used}
end
redis.call('HINCRBY', KEYS[1], 'used', ARGV[1])
redis.call('HSETNX', KEYS[1], 'settled', 0)
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return {1, used}
"""

# ARGV = actual - reserved, actual. A key that expired while the call ran is not brought back.
_REDIS_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'used', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'settled', ARGV[2])
"""


class RedisLedger:
    """Ledger shared by many replicas through Redis. Amounts stay exact up to 2**53 nano-dollars (~$9M) per key."""

    blocking = True

    def __init__(self, client: Any, prefix: str = "costspan:budget:") -> None:
        self.client = client
        self.prefix = prefix
        self._reserve = client.register_script(_REDIS_RESERVE)
        self._settle = client.register_script(_REDIS_SETTLE)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.5) -> RedisLedger:
        """A client that fails fast, so an unreachable Redis turns into the guard's policy, not a stuck call."""
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return cls(client)

    def reserve(self, key: str, amount: int, cap: int, expires_at: float) -> tuple[Reservation | None, int]:
        admitted, used = self._reserve(keys=[self.prefix + key], args=[amount, cap, int(expires_at) + 1])
        if not admitted:
            return None, int(used)
        return Reservation(key, amount, expires_at), int(used)

    def settle(self, reservation: Reservation, actual: int) -> int:
        return int(self._settle(keys=[self.prefix + reservation.key], args=[actual - reservation.amount, actual]))

    def claim_alert(self, key: str, level: str, expires_at: float) -> bool:
        name = f"{self.prefix}alert:{key}:{level}"
        return bool(self.client.set(name, 1, nx=True, exat=int(expires_at) + 1))

    def totals(self, key: str) -> Totals:
        used, settled = self.client.hmget(self.prefix + key, "used", "settled")
        return Totals(int(used or 0), int(settled or 0))

    def close(self) -> None:
        self.client.close()


def open_ledger(url: str) -> Ledger:
    """``memory``, ``sqlite`` (the embedded store), ``sqlite:///path/to/file`` or a ``redis://`` URL."""
    if url == "memory":
        return MemoryLedger()
    if url == "sqlite":
        return SQLiteLedger()
    if url.startswith("sqlite://"):
        return SQLiteLedger(url[len("sqlite://") :])
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisLedger.from_url(url)
    raise ValueError(f"unknown budget ledger {url!r}: use memory, sqlite, sqlite:///path or redis://host:port/db")
