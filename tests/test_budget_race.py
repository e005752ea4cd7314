"""The race: 200 concurrent HTTP requests for one customer, spread over replicas (separate uvicorn processes)
that share one ledger, against a cap that admits 20 calls. Settled spend must never pass the cap by more than
one call's worst case. SQLite across 2 processes, Redis across 4.

A replica is this module run as ``python -m tests.test_budget_race '<json config>'``.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from costspan.budgets.guard import Budget, BudgetGuard
from costspan.budgets.ledger import open_ledger, to_usd
from costspan.providers.openai.fake import FakeOpenAI
from costspan.providers.openai.limits import estimate_input_tokens

REQUESTS = 200
ADMITS = 20
BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "race"}], "max_tokens": 48}
ROOT = Path(__file__).resolve().parent.parent


# One call's worst case: gpt-4o-mini at $0.15 / $0.60 per million, 11 input tokens estimated (and billed by the
# fake: 1 + 7 per message + 3), 48 output tokens allowed (and written by the fake).
WORST = Decimal(11 * 15 + 48 * 60) / 100_000_000  # $0.00003045


# --- a replica ----------------------------------------------------------------------------------------------------


def replica(config: dict[str, Any]) -> None:
    import openai
    import uvicorn
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider

    from costspan.attribution.middleware import CostspanASGIMiddleware
    from costspan.instrumentor import CostspanInstrumentor
    from tests.test_middleware import who

    budget = Budget({"customer_id": "acme"}, "monthly", Decimal(config["cap"]))
    # Closed: a ledger error must show up as a 503 here, not as an unchecked call that could overspend.
    guard = BudgetGuard([budget], open_ledger(config["ledger"]), on_ledger_error="closed")
    CostspanInstrumentor().instrument(tracer_provider=TracerProvider(), guards=[guard])
    client = openai.AsyncOpenAI(base_url=config["fake"], api_key="sk-test-not-a-secret", max_retries=0, timeout=120)
    app = FastAPI()

    @app.post("/api/v1/chat/{chat_id}")
    async def chat(chat_id: str) -> dict[str, str]:
        await client.chat.completions.create(**BODY)
        return {"chat_id": chat_id}

    app.add_middleware(CostspanASGIMiddleware, resolver=who)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    print(server.servers[0].sockets[0].getsockname()[1], flush=True)
    thread.join()


# --- the test ---------------------------------------------------------------------------------------------------


def test_the_worst_case_is_what_the_guard_reserves() -> None:
    assert estimate_input_tokens(BODY) == 11
    assert len(BODY["messages"][0]["content"]) // 4 + 7 + 3 == 11  # what the fake bills


@dataclass
class Outcome:
    statuses: Counter[int]
    settled_usd: Decimal
    used_usd: Decimal


def start_replicas(stack: ExitStack, count: int, config: dict[str, Any]) -> list[str]:
    procs = []
    for _ in range(count):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.test_budget_race", json.dumps(config)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        stack.callback(_stop, proc)
        procs.append(proc)
    urls = []
    for proc in procs:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=120):
                raise RuntimeError("a replica did not start within 120 s")
        line = proc.stdout.readline().strip()
        assert line.isdigit(), f"replica failed to start (exit code {proc.poll()})"
        urls.append(f"http://127.0.0.1:{line}")
    return urls


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


async def storm(urls: list[str]) -> Counter[int]:
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(timeout=180, limits=limits) as client:

        async def one(i: int) -> int:
            url = f"{urls[i % len(urls)]}/api/v1/chat/{i}"
            response = await client.post(url, headers={"authorization": "Bearer acme"})
            return response.status_code

        return Counter(await asyncio.gather(*(one(i) for i in range(REQUESTS))))


def race(replicas: int, ledger_url: str, read_totals: Any, capsys: pytest.CaptureFixture[str], label: str) -> Outcome:
    worst = WORST
    cap = worst * ADMITS
    with FakeOpenAI(latency_s=0.2) as fake, ExitStack() as stack:
        urls = start_replicas(stack, replicas, {"cap": str(cap), "ledger": ledger_url, "fake": fake.base_url})
        statuses = asyncio.run(storm(urls))
        sent = len(fake.received)
    settled, used = read_totals()
    outcome = Outcome(statuses, to_usd(settled), to_usd(used))
    with capsys.disabled():
        print(
            f"\n[budget race] {label}: {replicas} replicas, {REQUESTS} concurrent requests, cap ${cap} "
            f"(= {ADMITS} x worst case ${worst}); HTTP {dict(sorted(statuses.items()))}; provider calls {sent}; "
            f"settled ${outcome.settled_usd} ({outcome.settled_usd / cap:.1%} of cap)"
        )
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] == sent  # every admitted call reached the provider, no refused one did
    assert 1 <= statuses[200] <= ADMITS + 1
    assert outcome.settled_usd <= cap + worst
    assert outcome.used_usd == outcome.settled_usd  # every reservation settled
    return outcome


def test_race_sqlite_two_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store.sqlite3"

    def totals() -> tuple[int, int]:
        with sqlite3.connect(path) as db:
            row = db.execute("SELECT sum(settled), sum(used) FROM costspan_budget_ledger").fetchone()
        return int(row[0] or 0), int(row[1] or 0)

    race(2, f"sqlite://{path}", totals, capsys, "SQLite")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    from tests.test_ledger import redis_server

    with redis_server(tmp_path) as url:
        yield url


def test_race_redis_four_processes(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)

    def totals() -> tuple[int, int]:
        settled = used = 0
        for key in client.scan_iter("costspan:budget:customer_id=*"):
            s, u = client.hmget(key, "settled", "used")
            settled += int(s or 0)
            used += int(u or 0)
        return settled, used

    race(4, redis_url, totals, capsys, "Redis")


if __name__ == "__main__":
    replica(json.loads(sys.argv[1]))
