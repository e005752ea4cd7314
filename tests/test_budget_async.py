"""Budgets under AsyncOpenAI: a ledger that waits on I/O (SQLite, Redis) is used from a worker thread, so the
app's event loop keeps running other tasks while a call is admitted and settled."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

import costspan
from costspan.budgets.guard import Budget, BudgetExceeded, BudgetGuard
from costspan.budgets.ledger import Reservation, SQLiteLedger
from costspan.providers.openai.fake import FakeOpenAI, Scripted
from tests.conftest import Pipeline, make_pipeline

DELAY_S = 0.3
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
USAGE = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
COST_NANO = 210_000  # gpt-4o-mini: 1000 x $0.15/M + 100 x $0.60/M = $0.000210


class SlowLedger(SQLiteLedger):
    """The real SQLite ledger behind a slow disk: every reservation and settlement takes DELAY_S."""

    def reserve(self, key: str, amount: int, cap: int, expires_at: float) -> tuple[Reservation | None, int]:
        time.sleep(DELAY_S)
        return super().reserve(key, amount, cap, expires_at)

    def settle(self, reservation: Reservation, actual: int) -> int:
        time.sleep(DELAY_S)
        return super().settle(reservation, actual)


def guarded(instrumented: list[Pipeline], ledger: SQLiteLedger, cap: Decimal) -> Pipeline:
    pipeline = make_pipeline(guards=[BudgetGuard([Budget({"customer_id": "acme"}, "monthly", cap)], ledger)])
    instrumented.append(pipeline)
    return pipeline


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_slow_ledger_never_stalls_the_event_loop(
    tmp_path: Path, fake_openai: FakeOpenAI, instrumented: list[Pipeline]
) -> None:
    ledger = SlowLedger(tmp_path / "ledger.sqlite3")
    pipeline = guarded(instrumented, ledger, Decimal(1))
    fake_openai.script(*(Scripted(usage=USAGE) for _ in range(4)))
    client = openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)
    lags: list[float] = []

    async def heartbeat(stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - started - 0.01)

    async def main() -> None:
        stop = asyncio.Event()
        beat = asyncio.create_task(heartbeat(stop))
        with costspan.attribute(customer_id="acme"):
            await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES) for _ in range(4))
            )
        await asyncio.sleep(2 * DELAY_S)  # settlements run meanwhile
        stop.set()
        await beat

    asyncio.run(main())
    # Four calls spent 8 x DELAY_S in the ledger; the loop never waited for it.
    assert len(lags) > 20 and max(lags) < DELAY_S / 2, max(lags)
    wait_for(lambda: len(pipeline.spans()) == 4)  # each span ends once its settlement is done
    (key,) = [k for (k,) in ledger._connection().execute("SELECT key FROM costspan_budget_ledger")]
    assert ledger.totals(key).settled == ledger.totals(key).used == 4 * COST_NANO


def test_a_refusal_from_the_worker_thread_reaches_the_caller_before_sending(
    tmp_path: Path, fake_openai: FakeOpenAI, instrumented: list[Pipeline]
) -> None:
    guarded(instrumented, SQLiteLedger(tmp_path / "ledger.sqlite3"), Decimal("0.0000001"))
    client = openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)

    async def main() -> None:
        with costspan.attribute(customer_id="acme"):  # Baggage must reach the thread: the budget is acme's
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    with pytest.raises(BudgetExceeded):
        asyncio.run(main())
    assert fake_openai.received == []


class HeldLedger(SQLiteLedger):
    """The real SQLite ledger, whose reservations wait until the test lets them through."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.release = threading.Event()

    def reserve(self, key: str, amount: int, cap: int, expires_at: float) -> tuple[Reservation | None, int]:
        self.entered.set()
        assert self.release.wait(10)
        return super().reserve(key, amount, cap, expires_at)


def test_a_call_cancelled_while_its_budget_is_checked_releases_its_reservation(
    tmp_path: Path, fake_openai: FakeOpenAI, instrumented: list[Pipeline]
) -> None:
    """The task is cancelled while the worker thread reserves: the thread cannot be stopped, so the call it
    started is failed as cancelled once it returns. Nothing was sent, so nothing stays reserved."""
    ledger = HeldLedger(tmp_path / "ledger.sqlite3")
    pipeline = guarded(instrumented, ledger, Decimal(1))
    client = openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)

    async def main() -> None:
        with costspan.attribute(customer_id="acme"):
            call = asyncio.create_task(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES))
            assert await asyncio.to_thread(ledger.entered.wait, 10)  # inside the reservation
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        ledger.release.set()  # the reservation goes through; the release follows in a worker thread

    asyncio.run(main())
    wait_for(lambda: len(pipeline.spans()) == 1)
    assert fake_openai.received == []
    (span,) = pipeline.spans()
    assert span.attributes is not None and span.attributes["error.type"] == "CancelledError"
    (key,) = [k for (k,) in ledger._connection().execute("SELECT key FROM costspan_budget_ledger")]
    wait_for(lambda: ledger.totals(key).used == 0)
