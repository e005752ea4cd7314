"""The ledger contract, run against each backend: memory, SQLite and a real redis-server on loopback."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest

from costspan.budgets.ledger import Ledger, MemoryLedger, RedisLedger, SQLiteLedger, open_ledger, to_nano, to_usd
from tests.ports import free_port


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A throwaway redis-server on loopback; yields its URL. Skips when the Debian package is missing."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; scripts/setup-system installs it)")
    import redis

    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["memory", "sqlite", "redis"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "memory":
        made: Ledger = MemoryLedger()
    elif request.param == "sqlite":
        made = SQLiteLedger(tmp_path / "store.sqlite3")
    else:
        url = request.getfixturevalue("redis_url")
        made = RedisLedger.from_url(url)
        made.client.flushdb()
    yield made
    made.close()


def _later() -> float:
    return time.time() + 3600


def test_nano_dollars_round_up() -> None:
    assert to_nano(Decimal("0.0000000001")) == 1  # a tenth of a nano-dollar still counts
    assert to_nano(Decimal("1.5")) == 1_500_000_000
    assert to_usd(1_500_000_000) == Decimal("1.5")


def test_reserve_until_the_cap_then_deny(ledger: Ledger) -> None:
    held = []
    for expected_used in (0, 40, 80):
        reservation, used = ledger.reserve("k", 40, 120, _later())
        assert reservation is not None
        assert used == expected_used
        held.append(reservation)
    reservation, used = ledger.reserve("k", 40, 120, _later())
    assert reservation is None
    assert used == 120
    assert ledger.totals("k").used == 120


def test_settle_replaces_the_reservation_by_the_real_cost(ledger: Ledger) -> None:
    reservation, _ = ledger.reserve("k", 50, 100, _later())
    assert reservation is not None
    assert ledger.settle(reservation, 30) == 30
    assert ledger.totals("k").used == 30
    failed, _ = ledger.reserve("k", 50, 100, _later())
    assert failed is not None
    assert ledger.settle(failed, 0) == 30  # an error settles to zero
    assert ledger.totals("k").used == 30


def test_a_used_up_window_refuses_even_free_calls(ledger: Ledger) -> None:
    reservation, _ = ledger.reserve("k", 100, 100, _later())
    assert reservation is not None
    assert ledger.reserve("k", 0, 100, _later())[0] is None
    assert ledger.reserve("other", 0, 100, _later())[0] is not None


def test_a_call_larger_than_the_cap_is_refused_on_an_empty_window(ledger: Ledger) -> None:
    assert ledger.reserve("k", 101, 100, _later())[0] is None
    assert ledger.totals("k").used == 0


def test_alerts_are_claimed_once(ledger: Ledger) -> None:
    assert ledger.claim_alert("k", "80%", _later())
    assert not ledger.claim_alert("k", "80%", _later())
    assert ledger.claim_alert("k", "100%", _later())
    assert ledger.claim_alert("k2", "80%", _later())


def test_concurrent_reservations_never_cross_the_cap(ledger: Ledger) -> None:
    def attempt(_: int) -> bool:
        return ledger.reserve("race", 7, 100, _later())[0] is not None

    with ThreadPoolExecutor(16) as pool:
        admitted = sum(pool.map(attempt, range(200)))
    assert admitted == 14  # 14 x 7 = 98 <= 100 < 105
    assert ledger.totals("race").used == 98


def test_redis_keys_expire_with_their_window(redis_url: str) -> None:
    ledger = RedisLedger.from_url(redis_url)
    end = time.time() + 600
    reservation, _ = ledger.reserve("w", 5, 100, end)
    assert reservation is not None
    ledger.claim_alert("w", "80%", end)
    for key in (b"costspan:budget:w", b"costspan:budget:alert:w:80%"):
        ttl = ledger.client.ttl(key)
        assert 0 < ttl <= 602, (key, ttl)
    ledger.close()


def test_sqlite_drops_ended_windows(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "s.sqlite3")
    ledger.reserve("old", 5, 100, time.time() - 1)
    ledger.reserve("new", 5, 100, time.time() + 600)  # a new window purges the ended ones
    assert ledger.totals("old").used == 0
    assert ledger.totals("new").used == 5


def test_open_ledger_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTSPAN_STORE_PATH", str(tmp_path / "store.sqlite3"))
    assert isinstance(open_ledger("memory"), MemoryLedger)
    default = open_ledger("sqlite")
    assert isinstance(default, SQLiteLedger)
    assert default.path == tmp_path / "store.sqlite3"
    explicit = open_ledger(f"sqlite://{tmp_path}/b.sqlite3")
    assert isinstance(explicit, SQLiteLedger)
    assert explicit.path == tmp_path / "b.sqlite3"
    with pytest.raises(ValueError, match="unknown budget ledger"):
        open_ledger("postgres://x")
