"""Added time per OpenAI call when a budget is checked, for each ledger: memory, SQLite and Redis.

    .venv/bin/python benchmarks/budget.py [--rounds 9] [--calls 300]

The SDK talks to an in-process ``httpx2.MockTransport`` so the network does not drown the figure. Each round
times, back to back, the same instrumented call with no guard and with a ``BudgetGuard`` on each ledger (reserve
before the call, settle after it: two ledger round trips). The report is the median over interleaved rounds of
the difference. Redis is a local ``redis-server`` on loopback, started here when the binary exists; a networked
Redis adds its round-trip time twice.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import openai
from opentelemetry.sdk.trace import TracerProvider

from costspan import attribute
from costspan.budgets.guard import Budget, BudgetGuard
from costspan.budgets.ledger import Ledger, MemoryLedger, RedisLedger, SQLiteLedger
from costspan.instrumentor import CostspanInstrumentor

MESSAGES = [{"role": "user", "content": "How do I reset my password?"}]
BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4.1-mini-2025-04-14",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23},
    }
).encode()


def make_client() -> openai.OpenAI:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=BODY, headers={"content-type": "application/json"})

    http_client = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai.OpenAI(api_key="sk-bench", base_url="https://api.openai.com/v1", http_client=http_client)


@contextmanager
def redis_server() -> Iterator[str | None]:
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        for _ in range(300):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ledgers: dict[str, Ledger] = {"memory": MemoryLedger(), "sqlite": SQLiteLedger(tmp / "store.sqlite3")}
        redis_url = stack.enter_context(redis_server())
        if redis_url:
            ledgers["redis"] = RedisLedger.from_url(redis_url)
        else:
            print("redis-server not found: the Redis figure is skipped")

        budget = Budget({"customer_id": "*"}, "monthly", Decimal(1_000_000))  # never reached: the check is measured
        instrumentor = CostspanInstrumentor()
        instrumentor.instrument(tracer_provider=TracerProvider(), guards=[])
        telemetry = instrumentor.telemetry
        assert telemetry is not None
        client = make_client()

        def call() -> None:
            client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, max_tokens=200)  # type: ignore[arg-type]

        def timed(guard: BudgetGuard | None) -> float:
            # The same instrumented client each time; only the guard it runs changes.
            telemetry.guards = (guard,) if guard else ()
            return per_call_us(call, args.calls)

        made = {name: BudgetGuard([budget], ledger) for name, ledger in ledgers.items()}
        results: dict[str, list[float]] = {"none": [], **{name: [] for name in made}}
        with attribute(customer_id="acme", feature="bench", route="/bench", environment="bench"):
            timed(None)  # warm up: price sheets, connections, prepared statements
            for guard in made.values():
                timed(guard)
            for _ in range(args.rounds):
                results["none"].append(timed(None))
                for name, guard in made.items():
                    results[name].append(timed(guard))
        instrumentor.uninstrument()

    base = statistics.median(results["none"])
    print(f"rounds={args.rounds} calls/round={args.calls}")
    print(f"  instrumented call, no budget          {base:9.1f} µs")
    for name in made:
        added = statistics.median(b - a for a, b in zip(results["none"], results[name], strict=True))
        print(f"  added by a budget check ({name:6})     {added:9.1f} µs")


if __name__ == "__main__":
    main()
