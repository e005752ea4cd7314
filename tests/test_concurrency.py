"""No attribution leaks between concurrent calls: 500 overlapping async calls, and 8 threads."""

from __future__ import annotations

import asyncio
import threading
import time

import openai
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry import baggage

from costspan import attribute
from costspan.providers.openai.fake import FakeOpenAI
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


NIGHTLY = attribute(feature="nightly", customer_id="system")  # one instance, shared, as a module constant


def test_one_shared_attribute_instance_in_overlapping_threads_and_tasks() -> None:
    """Blocks of one instance overlap in 8 threads and 50 tasks: each leaves its own thread or task as it found
    it, and nothing stays attributed after the block (a pool thread would carry it into its next job)."""
    barrier = threading.Barrier(8)
    left_over: list[dict[str, object]] = []

    def worker() -> None:
        barrier.wait()
        for _ in range(50):
            with NIGHTLY:
                assert baggage.get_all()["customer_id"] == "system"
                time.sleep(0.0005)  # other threads enter and leave meanwhile
        left_over.append(dict(baggage.get_all()))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    async def task(i: int) -> dict[str, object]:
        with attribute(customer_id=f"outer_{i}"):
            with NIGHTLY:
                await asyncio.sleep(0.001 * (i % 5))
            return dict(baggage.get_all())

    async def tasks() -> list[dict[str, object]]:
        return await asyncio.gather(*(task(i) for i in range(50)))

    assert left_over == [{}] * 8
    assert asyncio.run(tasks()) == [{"customer_id": f"outer_{i}"} for i in range(50)]
    assert dict(baggage.get_all()) == {}
