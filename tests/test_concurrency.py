"""No attribution leaks between concurrent calls: 500 overlapping async calls, and 8 threads."""

from __future__ import annotations

import asyncio
import threading

import openai
from openai.types.chat import ChatCompletionMessageParam

from costspan import attribute
from costspan.fakeopenai import FakeOpenAI
from tests.conftest import Pipeline

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def spans_by_customer(pipeline: Pipeline) -> dict[str, str]:
    """customer_id attribute -> the marker each call put in its own request (via its user field)."""
    return {str((s.attributes or {})["customer_id"]): str((s.attributes or {})["feature"]) for s in pipeline.spans()}


def test_500_overlapping_async_calls_each_keep_their_customer(pipeline: Pipeline, fake_openai: FakeOpenAI) -> None:
    client = openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="k", max_retries=0)
    fake_openai.latency_s = 0.01  # keep many calls in flight at once

    async def one(i: int) -> None:
        with attribute(customer_id=f"cust_{i}", feature=f"feature_{i}"):
            await asyncio.sleep(0)  # yield so tasks interleave between setting baggage and calling
            if i % 2:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            else:
                stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
                async for _ in stream:
                    await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(500)))

    try:
        asyncio.run(main())
    finally:
        fake_openai.latency_s = 0.0
    pairs = spans_by_customer(pipeline)
    assert len(pipeline.spans()) == 500
    assert pairs == {f"cust_{i}": f"feature_{i}" for i in range(500)}


def test_8_threads_each_keep_their_customer(pipeline: Pipeline, fake_openai: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="k", max_retries=0)
    barrier = threading.Barrier(8)

    def worker(t: int) -> None:
        barrier.wait()
        for j in range(25):
            with attribute(customer_id=f"cust_{t}_{j}", feature=f"feature_{t}_{j}"):
                list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=j % 2 == 0))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    pairs = spans_by_customer(pipeline)
    assert len(pipeline.spans()) == 200
    assert pairs == {f"cust_{t}_{j}": f"feature_{t}_{j}" for t in range(8) for j in range(25)}
