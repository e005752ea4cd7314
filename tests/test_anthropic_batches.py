"""Anthropic Message Batches through the real ``anthropic`` SDK against the loopback stand-in, with hand-computed
dollars.

The Message Batches API bills 50% of the standard rates, cache reads and writes included
(https://platform.claude.com/docs/en/build-with-claude/batch-processing#pricing). genai-prices 0.2.5's batch
variants, frozen in tests/frozen_prices.py, say so (USD per million tokens):
- claude-sonnet-4-5: input 1.50, output 7.50, cache read 0.15, 5-minute write 1.875, 1-hour write 3 (standard:
  3 / 15 / 0.30 / 3.75 / 6); past 200,000 input tokens of one request, 3 / 11.25 / 0.30 / 3.75 / 6.
- claude-haiku-4-5: input 0.50, output 2.50 (standard: 1 / 5).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic._decoders.jsonl import JSONLDecoder
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from costspan import semconv
from costspan.attribution.baggage import attribute
from costspan.budgets.guard import Budget, BudgetExceeded, BudgetGuard
from costspan.budgets.ledger import MemoryLedger
from costspan.cli.reprice import reprice_row
from costspan.pricing.pricer import Pricer
from costspan.providers.anthropic.batches import summarize_result, unix_ns
from costspan.providers.anthropic.fake import BatchOutcome, FakeAnthropic
from costspan.store.batch_origins import SQLiteBatchOrigins
from costspan.store.exporter import CostspanSpanExporter, row_from_span
from costspan.store.paths import COSTSPAN_STORE_PATH
from costspan.store.sqlite import Store, StoreError
from tests.conftest import Pipeline, make_pipeline

SONNET = "claude-sonnet-4-5-20250929"
HAIKU = "claude-haiku-4-5-20251001"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def client(fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=0) as c:
        yield c


@pytest.fixture(autouse=True)
def store_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the instrumentor keeps who created each batch: a store of the test's own, never the user's."""
    path = tmp_path / "costspan.sqlite3"
    monkeypatch.setenv(COSTSPAN_STORE_PATH, str(path))
    return path


def request(custom_id: str, model: str = SONNET, text: str = "Summarize this ticket.") -> Any:
    return {
        "custom_id": custom_id,
        "params": {"model": model, "max_tokens": 9, "messages": [{"role": "user", "content": text}]},
    }


def results(pipeline: Pipeline) -> list[ReadableSpan]:
    """The spans of batch results (the create call's span has no usage)."""
    return [s for s in pipeline.spans() if (s.attributes or {}).get(semconv.GEN_AI_USAGE_INPUT_TOKENS) is not None]


def by_result(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    return {
        str((s.attributes or {})[semconv.COSTSPAN_BATCH_ID]).partition("/")[2]: dict(s.attributes or {})
        for s in results(pipeline)
    }


def dollars(attributes: dict[str, Any]) -> Decimal:
    return Decimal(str(attributes[semconv.GEN_AI_USAGE_COST_AMOUNT]))


def test_each_succeeded_result_is_priced_at_batch_rates_on_its_own(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script_results(
        # 1,000 uncached + 20,000 read + 2,000 written for 5 minutes + 1,000 for an hour, 500 output:
        # 1,000 x 1.50 + 20,000 x 0.15 + 2,000 x 1.875 + 1,000 x 3 + 500 x 7.50 = 15,000 micro-dollars, $0.015:
        # half the $0.03 the same call costs synchronously (docs/cost.md).
        cached=BatchOutcome(
            usage={
                "input_tokens": 1_000,
                "cache_read_input_tokens": 20_000,
                "cache_creation_input_tokens": 3_000,
                "cache_creation": {"ephemeral_5m_input_tokens": 2_000, "ephemeral_1h_input_tokens": 1_000},
                "output_tokens": 500,
                "service_tier": "batch",
            }
        ),
        # 150,000 input, 1,000 output, twice: 150,000 x 1.50 + 1,000 x 7.50 = 232,500 micro-dollars, $0.2325 each.
        # The batch sends Sonnet 324,000 input tokens in all, but each request is billed on its own, below the
        # 200,000-token tier (which would bill the whole at 3 / 11.25).
        long=BatchOutcome(usage={"input_tokens": 150_000, "output_tokens": 1_000, "service_tier": "batch"}),
        long_too=BatchOutcome(usage={"input_tokens": 150_000, "output_tokens": 1_000, "service_tier": "batch"}),
        # Haiku in the same batch, at its own batch rates: 10,000 x 0.50 + 2,000 x 2.50 = $0.01.
        haiku=BatchOutcome(usage={"input_tokens": 10_000, "output_tokens": 2_000, "service_tier": "batch"}),
        failed=BatchOutcome("errored"),
        late=BatchOutcome("expired"),
    )
    batch = client.messages.batches.create(
        requests=[
            request("cached"),
            request("long"),
            request("long_too"),
            request("haiku", HAIKU),
            request("failed"),
            request("late"),
        ]
    )
    lines = list(client.messages.batches.results(batch.id))
    assert [line.result.type for line in lines] == [*["succeeded"] * 4, "errored", "expired"]

    spent = by_result(pipeline)
    assert set(spent) == {"cached", "long", "long_too", "haiku"}  # errored and expired results are not billed
    assert dollars(spent["cached"]) == Decimal("0.015")
    assert dollars(spent["long"]) == dollars(spent["long_too"]) == Decimal("0.2325")
    assert dollars(spent["haiku"]) == Decimal("0.01")
    # The batch's cost: 0.015 + 2 x 0.2325 + 0.01.
    assert sum(map(dollars, spent.values())) == Decimal("0.49")
    haiku = spent["haiku"]
    assert haiku[semconv.GEN_AI_OPERATION_NAME] == "batch"
    assert haiku[semconv.GEN_AI_RESPONSE_MODEL] == HAIKU
    assert haiku[semconv.COSTSPAN_BATCH_ID] == f"{batch.id}/haiku"
    assert haiku[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_PRICED
    assert semconv.ANTHROPIC_RESPONSE_SERVICE_TIER not in haiku  # "batch" is the batch flag, not a tier
    # From the batch's creation to its end, priced as of its creation.
    span = next(s for s in results(pipeline) if (s.attributes or {})[semconv.COSTSPAN_BATCH_ID] == f"{batch.id}/long")
    retrieved = client.messages.batches.retrieve(batch.id)
    assert span.start_time == unix_ns(retrieved.created_at)
    assert span.end_time == unix_ns(retrieved.ended_at)


def test_a_stored_result_reprices_to_the_spans_dollars(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic, tmp_path: Path
) -> None:
    fake.script_results(
        long=BatchOutcome(usage={"input_tokens": 150_000, "output_tokens": 1_000, "service_tier": "batch"})
    )
    batch = client.messages.batches.create(requests=[request("long")])
    list(client.messages.batches.results(batch.id))
    with Store(tmp_path / "reprice.sqlite3") as store:
        store.insert([row for span in pipeline.spans() if (row := row_from_span(span)) is not None])
        (stored,) = store.query("SELECT * FROM spans WHERE input_tokens IS NOT NULL")
    assert stored["batch_id"] == f"{batch.id}/long"
    assert reprice_row(Pricer(), stored).total == Decimal("0.2325")


def test_results_are_attributed_to_whoever_created_the_batch(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.batch_polls = 1
    with attribute(feature="nightly-summarize", customer_id="cust_9"):
        batch = client.messages.batches.create(requests=[request("one"), request("two")])
    (created,) = pipeline.spans()
    a = dict(created.attributes or {})
    assert (a["feature"], a["customer_id"]) == ("nightly-summarize", "cust_9")
    assert a[semconv.COSTSPAN_BATCH_ID] == batch.id
    assert a[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_NO_USAGE  # nothing is billed at creation

    # Polled without baggage, read by a worker with baggage of its own: the creator is billed.
    assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    assert len(pipeline.spans()) == 1
    with attribute(feature="results-worker", customer_id="internal"):
        list(client.messages.batches.results(batch.id))
    spent = by_result(pipeline)
    assert set(spent) == {"one", "two"}
    for attributes in spent.values():
        assert (attributes["feature"], attributes["customer_id"]) == ("nightly-summarize", "cust_9")


def test_results_read_again_are_counted_once(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    batch = client.messages.batches.create(requests=[request("one"), request("two"), request("three")])
    stream = client.messages.batches.results(batch.id)
    next(stream)  # a reader stops after the first result: only what was read is recorded
    stream.close()
    assert set(by_result(pipeline)) == {"one"}
    list(client.messages.batches.results(batch.id))
    again = client.beta.messages.batches.results(batch.id)
    assert type(again) is JSONLDecoder  # read to the end once: not watched again
    list(again)
    assert sorted(str((s.attributes or {})[semconv.COSTSPAN_BATCH_ID]) for s in results(pipeline)) == [
        f"{batch.id}/one",
        f"{batch.id}/three",
        f"{batch.id}/two",
    ]


def test_async_and_beta_batches(pipeline: Pipeline, fake: FakeAnthropic) -> None:
    async def run() -> str:
        async with anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=0) as client:
            with attribute(feature="async-batch"):
                batch = await client.beta.messages.batches.create(requests=[request("one"), request("two")])
            assert (await client.messages.batches.retrieve(batch.id)).processing_status == "ended"
            lines = [line async for line in await client.messages.batches.results(batch.id)]
            assert len(lines) == 2
            return batch.id

    batch_id = asyncio.run(run())
    spent = by_result(pipeline)
    assert set(spent) == {"one", "two"}
    # "Summarize this ticket." is 22 characters: 22 // 4 + 5 = 10 input tokens at the stand-in, 9 output tokens.
    # 10 x 1.50 + 9 x 7.50 = 82.5 micro-dollars each.
    assert [dollars(a) for a in spent.values()] == [Decimal("0.0000825")] * 2
    assert all(a["feature"] == "async-batch" for a in spent.values())
    assert all(str(a[semconv.COSTSPAN_BATCH_ID]).startswith(batch_id + "/") for a in spent.values())


def test_a_canceled_batch_bills_nothing(pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.batch_polls = 5
    batch = client.messages.batches.create(requests=[request("one")])
    assert client.messages.batches.cancel(batch.id).processing_status == "canceling"
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
    assert [line.result.type for line in client.messages.batches.results(batch.id)] == ["canceled"]
    assert len(list(client.messages.batches.list())) == 1
    assert results(pipeline) == []
    assert len(pipeline.spans()) == 1  # the create call's: cancel, retrieve, list and results make none


READ_IN_ANOTHER_PROCESS = textwrap.dedent(
    """
    import sys

    import anthropic
    from genai_prices import data_snapshot
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from costspan.instrumentor import CostspanInstrumentor
    from costspan.store.exporter import CostspanSpanExporter
    from tests import frozen_prices

    data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(frozen_prices.providers, from_auto_update=False))
    exporter = CostspanSpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    CostspanInstrumentor().instrument(tracer_provider=provider)
    base_url, batch_id = sys.argv[1:]
    with anthropic.Anthropic(base_url=base_url, api_key="sk-ant-test", max_retries=0) as client:
        print(len(list(client.messages.batches.results(batch_id))))
    print(exporter.stored_spans)
    """
)


def test_another_process_attributes_the_results_and_they_are_stored_once(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic, store_path: Path
) -> None:
    pipeline.tracer_provider.add_span_processor(SimpleSpanProcessor(CostspanSpanExporter(store_path)))
    with attribute(feature="nightly-summarize", customer_id="cust_9"):
        batch = client.messages.batches.create(requests=[request("one"), request("two")])
    client.messages.batches.retrieve(batch.id)  # ended: the results wait for the worker

    # The worker, with no baggage, reads the results first: attributed from what the creating process kept.
    env = {
        **os.environ,
        COSTSPAN_STORE_PATH: str(store_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    worker = subprocess.run(
        [sys.executable, "-c", READ_IN_ANOTHER_PROCESS, fake.base_url, batch.id],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert worker.stdout.split() == ["2", "2"], worker.stderr  # two lines read, two results stored

    # Read again here: recorded by this process too, but the store keeps the worker's copy of each result.
    list(client.messages.batches.results(batch.id))
    assert len(results(pipeline)) == 2
    with Store(store_path) as store:
        rows = store.query(
            "SELECT batch_id, feature, customer_id, cost_usd FROM spans WHERE input_tokens IS NOT NULL ORDER BY 1"
        )
    assert [r["batch_id"] for r in rows] == [f"{batch.id}/one", f"{batch.id}/two"]
    assert {(r["feature"], r["customer_id"]) for r in rows} == {("nightly-summarize", "cust_9")}
    assert sum(Decimal(str(r["cost_usd"])) for r in rows) == Decimal("0.000165")  # 2 x 82.5 micro-dollars


def test_a_result_that_billed_nothing_summarizes_to_none() -> None:
    for kind in ("errored", "canceled", "expired"):
        assert summarize_result({"custom_id": "x", "result": {"type": kind}}, "msgbatch_1") is None
    message = {"model": SONNET, "usage": {"input_tokens": 3, "output_tokens": 2, "service_tier": "batch"}}
    summary = summarize_result({"custom_id": "x", "result": {"type": "succeeded", "message": message}}, "msgbatch_1")
    assert summary is not None
    assert (summary.batch_id, summary.service_tier, summary.model) == ("msgbatch_1/x", None, SONNET)


def test_batch_origins_are_shared_through_the_file_and_refuse_a_foreign_one(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    SQLiteBatchOrigins(path).remember("msgbatch_1", {"feature": "f"})
    assert SQLiteBatchOrigins(path).recall("msgbatch_1") == {"feature": "f"}  # another process, the same host
    assert SQLiteBatchOrigins(path).recall("msgbatch_2") is None
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a store")
    with pytest.raises(StoreError, match="not a costspan store"):
        SQLiteBatchOrigins(foreign).remember("msgbatch_1", {"feature": "f"})
    assert foreign.read_text() == "not a store"


def test_results_are_charged_to_the_creators_budget_once(
    fake: FakeAnthropic, client: anthropic.Anthropic, instrumented: list[Pipeline]
) -> None:
    """acme's $0.01 cap admits the batch (its cost is unknown until its results come), then the results' $0.465
    is charged to acme, once however often they are read, and acme's next call is refused."""
    ledger = MemoryLedger()
    guard = BudgetGuard([Budget({"customer_id": "acme"}, "monthly", Decimal("0.01"))], ledger)
    instrumented.append(make_pipeline(guards=[guard]))
    fake.script_results(
        one=BatchOutcome(usage={"input_tokens": 150_000, "output_tokens": 1_000, "service_tier": "batch"}),
        two=BatchOutcome(usage={"input_tokens": 150_000, "output_tokens": 1_000, "service_tier": "batch"}),
    )
    with attribute(customer_id="acme"):
        batch = client.messages.batches.create(requests=[request("one"), request("two")])
    list(client.messages.batches.results(batch.id))  # read without baggage: charged to the creator
    list(client.messages.batches.results(batch.id))
    (key,) = ledger._counters
    # 2 x (150,000 x 1.50 + 1,000 x 7.50) = 465,000 micro-dollars = 465,000,000 nano-dollars.
    assert ledger.totals(key).settled == ledger.totals(key).used == 465_000_000
    with attribute(customer_id="acme"), pytest.raises(BudgetExceeded):
        client.messages.create(model=SONNET, max_tokens=9, messages=[{"role": "user", "content": "Hi"}])


class UnwritableOrigins:
    def remember(self, batch_id: str, attribution: Any) -> None:
        raise OSError("read-only file system")

    def recall(self, batch_id: str) -> Any:
        raise OSError("read-only file system")


def test_a_failing_origins_table_never_breaks_the_batch(
    fake: FakeAnthropic, client: anthropic.Anthropic, instrumented: list[Pipeline], caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = make_pipeline(batch_origins=UnwritableOrigins())
    instrumented.append(pipeline)
    with attribute(customer_id="acme"):
        batch = client.messages.batches.create(requests=[request("one")])
    assert len(list(client.messages.batches.results(batch.id))) == 1
    (result,) = results(pipeline)
    assert "customer_id" not in (result.attributes or {})  # recorded and priced, without its creator
    assert (result.attributes or {})[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_PRICED
    assert "could not keep who created batch" in caplog.text
    assert "could not look up who created batch" in caplog.text


def test_a_batch_created_with_raw_response_is_attributed(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    with attribute(feature="raw"):
        batch = client.messages.batches.with_raw_response.create(requests=[request("one")]).parse()
    list(client.messages.batches.results(batch.id))
    assert by_result(pipeline)["one"]["feature"] == "raw"
