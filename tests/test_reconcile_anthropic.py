"""`costspan reconcile --provider anthropic`: real instrumented Claude calls in the store against the stand-in's own
bill, read over HTTP through its Admin API usage and cost reports, with the gaps Anthropic documents stated.

claude-haiku-4-5 at the stand-in's rates and costspan's (tests/frozen_prices.py) alike, USD per million tokens:
input 1, cache read 0.10, output 5.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import MessageParam
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from costspan.cli import main
from costspan.providers.anthropic.fake import Billed, CodeExecution, FakeAnthropic, Scripted
from costspan.providers.anthropic.reconcile import AdminReports
from costspan.providers.openai.fake import FakeOpenAI
from costspan.reports.reconcile import OK, PARTIAL, PROVIDER_GAP, UNSEEN_CALLS, utc_midnight
from costspan.store.exporter import CostspanSpanExporter
from costspan.store.sqlite import Store
from tests.conftest import make_pipeline

ADMIN_KEY = "sk-ant-admin01-test-not-a-secret"
HAIKU = "claude-haiku-4-5-20251001"
DAY_NS = 86_400 * 10**9
TODAY = datetime.now(UTC).date()
YESTERDAY = TODAY - timedelta(days=1)
HELLO: list[MessageParam] = [{"role": "user", "content": "hi"}]
# 60,000 uncached + 40,000 cache reads = 100,000 input tokens, 20,000 output: $0.06 + $0.004 + $0.10.
CALL_1 = {"input_tokens": 60_000, "cache_read_input_tokens": 40_000, "output_tokens": 20_000}
CALL_1_USD = (60_000 * 1 + 40_000 * 0.10 + 20_000 * 5) / 1e6  # 0.164
CALL_2 = {"input_tokens": 300_000, "output_tokens": 10_000}
CALL_2_USD = (300_000 * 1 + 10_000 * 5) / 1e6  # 0.35


@pytest.fixture
def provider() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "spans.sqlite3"


@pytest.fixture
def admin_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", ADMIN_KEY)
    return ADMIN_KEY


def make_calls(provider: FakeAnthropic, store_path: Path, *usages: dict[str, Any]) -> None:
    """Instrumented Claude calls, exported to the store, each with the given usage on both sides."""
    pipeline = make_pipeline()
    exporter = CostspanSpanExporter(store_path)
    pipeline.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        provider.script(*(Scripted(usage={"service_tier": "standard", **usage}) for usage in usages))
        with anthropic.Anthropic(base_url=provider.base_url, api_key="sk-ant-test", max_retries=0) as client:
            for _ in usages:
                client.messages.create(model=HAIKU, max_tokens=9, messages=HELLO)
    finally:
        pipeline.instrumentor.uninstrument()
        exporter.shutdown()


def uninstrumented_call(provider: FakeAnthropic, usage: dict[str, Any]) -> None:
    provider.script(Scripted(usage=usage))
    with anthropic.Anthropic(base_url=provider.base_url, api_key="sk-ant-test", max_retries=0) as client:
        client.messages.create(model=HAIKU, max_tokens=9, messages=HELLO)


def move_to_yesterday(provider: FakeAnthropic, store_path: Path) -> None:
    """Both sides' records of today, one day back: a finished day, which the provider reports in full."""
    with Store(store_path) as store:
        store.execute_write("UPDATE spans SET start_ns = start_ns - ?", [(DAY_NS,)])
    with provider.ledger.lock:
        provider.ledger.entries[:] = [replace(e, at=e.at - 86_400) for e in provider.ledger.entries]


def at_noon(day: Any) -> int:
    return int(utc_midnight(day).timestamp()) + 43_200


def run(provider: FakeAnthropic, store_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    argv = ["reconcile", "--provider", "anthropic", "--store", str(store_path), "--base-url", provider.base_url]
    code = main([*argv, "--format", "json", *args])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def openai_call(bill: FakeOpenAI, store_path: Path) -> None:
    pipeline = make_pipeline()
    exporter = CostspanSpanExporter(store_path)
    pipeline.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        with openai.OpenAI(base_url=bill.base_url, api_key="sk-test", max_retries=0) as client:
            client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    finally:
        pipeline.instrumentor.uninstrument()
        exporter.shutdown()


def test_instrumented_claude_calls_match_the_bill_and_openai_calls_are_left_out(
    provider: FakeAnthropic,
    store_path: Path,
    admin_key: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_calls(provider, store_path, CALL_1, CALL_2)
    move_to_yesterday(provider, store_path)
    with FakeOpenAI() as openai_bill:
        openai_call(openai_bill, store_path)  # today, in the same store: on OpenAI's bill, not Anthropic's

        code, rows = run(provider, store_path, capsys, "--since", "1d")
        assert code == 0
        day, today = rows
        assert day["verdict"] == OK and today["verdict"] == PARTIAL and today["recorded_requests"] == 0
        assert day["billed_usd"] == pytest.approx(CALL_1_USD + CALL_2_USD, abs=1e-12)
        assert day["recorded_usd"] == pytest.approx(CALL_1_USD + CALL_2_USD, abs=1e-12)
        assert day["billed_tokens"] == day["recorded_tokens"] == 100_000 + 20_000 + 300_000 + 10_000
        # The usage report has no request counts: shown as unknown, never as 0 billed calls.
        assert (day["billed_requests"], day["recorded_requests"]) == (None, 2)

        # And OpenAI's reconcile never counts the Claude calls as its own.
        monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-test")
        argv = ["reconcile", "--store", str(store_path), "--base-url", openai_bill.base_url, "--since", "1d"]
        assert main([*argv, "--format", "json"]) == 0
        assert [row["recorded_requests"] for row in json.loads(capsys.readouterr().out)] == [0, 1]


def test_the_cost_report_is_read_as_cents_and_paginated(provider: FakeAnthropic, admin_key: str) -> None:
    """40 days need two pages of 31 daily buckets from each report; amounts are decimal strings in cents."""
    old = datetime.now(UTC).date() - timedelta(days=35)
    provider.bill(Billed(at_noon(old), HAIKU, uncached_input_tokens=1_000_000, output_tokens=100_000))
    query = "starting_at=2020-01-01T00:00:00Z&ending_at=2020-01-02T00:00:00Z"
    with urllib.request.urlopen(
        urllib.request.Request(
            f"{provider.base_url}/v1/organizations/cost_report?{query}&group_by[]=description",
            headers={"x-api-key": ADMIN_KEY, "anthropic-version": "2023-06-01"},
        )
    ) as response:
        assert json.load(response) == {
            "data": [{"starting_at": "2020-01-01T00:00:00Z", "ending_at": "2020-01-02T00:00:00Z", "results": []}],
            "has_more": False,
            "next_page": None,
        }

    pages: list[tuple[str, int]] = []
    reports = AdminReports(admin_key, base_url=provider.base_url, on_page=lambda path, n: pages.append((path, n)))
    since = utc_midnight(TODAY - timedelta(days=40))
    side = reports.read(since, utc_midnight(TODAY + timedelta(days=1)))
    assert pages == [
        ("v1/organizations/cost_report", 1),
        ("v1/organizations/cost_report", 2),
        ("v1/organizations/usage_report/messages", 1),
        ("v1/organizations/usage_report/messages", 2),
    ]
    figures = side.days[old][HAIKU]
    assert figures.usd == pytest.approx(1.00 + 0.50)  # 1M input at $1, 100k output at $5
    assert (figures.input_tokens, figures.output_tokens) == (1_000_000, 100_000)


def test_uninstrumented_calls_are_unseen_by_their_tokens(
    provider: FakeAnthropic, store_path: Path, admin_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_calls(provider, store_path, CALL_1)
    uninstrumented_call(provider, CALL_2)
    move_to_yesterday(provider, store_path)
    code, rows = run(provider, store_path, capsys, "--since", "1d")
    assert code == 1
    assert rows[0]["verdict"] == UNSEEN_CALLS
    assert "the provider billed 310,000 more tokens than costspan recorded" in rows[0]["cause"]


def test_priority_tier_is_stated_as_a_provider_gap_not_a_difference(
    provider: FakeAnthropic, store_path: Path, admin_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_calls(provider, store_path, CALL_1, {**CALL_2, "service_tier": "priority"})
    move_to_yesterday(provider, store_path)
    code, rows = run(provider, store_path, capsys, "--since", "1d", "--by-model")
    assert code == 0
    by_model = {row["model"]: row for row in rows if row["day"] == YESTERDAY.isoformat()}
    assert by_model[HAIKU]["billed_usd"] == pytest.approx(CALL_1_USD)
    priority = by_model[f"{HAIKU} (priority tier)"]
    assert priority["billed_usd"] == 0 and priority["billed_tokens"] == priority["recorded_tokens"] == 310_000
    assert priority["verdict"] == PROVIDER_GAP
    assert f"{HAIKU} (priority tier): priority tier, not in the cost report" in priority["cause"]
    assert priority["cause"].endswith("Everything else agrees within the tolerance")

    # A gap elsewhere in the day is still found, with the priority tier named as set aside.
    provider.bill(Billed(at_noon(YESTERDAY), HAIKU, uncached_input_tokens=300_000, output_tokens=10_000))
    code, rows = run(provider, store_path, capsys, "--since", "1d")
    assert code == 1 and rows[0]["verdict"] == UNSEEN_CALLS
    assert rows[0]["cause"].startswith("the provider billed 310,000 more tokens than costspan recorded")
    assert f"Set aside, not compared: {HAIKU} (priority tier): priority tier" in rows[0]["cause"]


def test_code_execution_is_stated_as_a_provider_gap(
    provider: FakeAnthropic, store_path: Path, admin_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_calls(provider, store_path, CALL_1)
    move_to_yesterday(provider, store_path)
    provider.bill(CodeExecution(at_noon(YESTERDAY), Decimal("0.35")))
    assert main(["reconcile", "--provider", "anthropic", "--store", str(store_path), "--base-url",
                 provider.base_url, "--since", "1d"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Recorded by costspan vs billed by Anthropic (the whole organization)" in out
    assert f"{YESTERDAY}: provider gap: (code execution): code execution, in the cost report but not the usage" in out
    assert "(billed $0.3500, recorded $0.0000 for 0 calls)" in out
    assert "billed $0.5140, recorded $0.1640, difference -$0.3500" in out
    assert "Every finished day agrees within the tolerance, apart from what the provider's reports leave out." in out


def test_workspace_scope(
    provider: FakeAnthropic, store_path: Path, admin_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_calls(provider, store_path, CALL_1)
    move_to_yesterday(provider, store_path)
    provider.bill(Billed(at_noon(YESTERDAY), HAIKU, 1_000_000, workspace_id="wrkspc_other"))
    code, rows = run(provider, store_path, capsys, "--since", "1d")
    assert code == 1 and rows[0]["billed_usd"] == pytest.approx(CALL_1_USD + 1.00)
    code, rows = run(provider, store_path, capsys, "--since", "1d", "--workspace", "wrkspc_other")
    assert rows[0]["billed_usd"] == pytest.approx(1.00) and rows[0]["billed_tokens"] == 1_000_000


def test_a_missing_or_ordinary_key_says_what_to_do(
    provider: FakeAnthropic, store_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_calls(provider, store_path, CALL_1)
    argv = ["reconcile", "--provider", "anthropic", "--store", str(store_path), "--base-url", provider.base_url]
    monkeypatch.delenv("ANTHROPIC_ADMIN_KEY", raising=False)
    assert main(argv) == 2
    assert "set $ANTHROPIC_ADMIN_KEY to an Admin API key (sk-ant-admin...)" in capsys.readouterr().err

    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", "sk-ant-api03-an-ordinary-key")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "HTTP 401 (invalid x-api-key)" in err and "need an Admin API key (sk-ant-admin..." in err

    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", ADMIN_KEY)
    assert main([*argv, "--project", "proj_abc"]) == 2
    assert "--project is for another provider; with --provider anthropic use --workspace" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"anthropic-version": "2023-06-01"}, 401),
        ({"x-api-key": "sk-ant-api03-ordinary", "anthropic-version": "2023-06-01"}, 401),
        ({"x-api-key": ADMIN_KEY}, 400),  # anthropic-version is required
    ],
)
def test_the_stand_in_serves_its_reports_only_as_the_api_does(
    provider: FakeAnthropic, headers: dict[str, str], status: int
) -> None:
    url = f"{provider.base_url}/v1/organizations/usage_report/messages?starting_at=2020-01-01T00:00:00Z"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, headers=headers))
    assert refused.value.code == status
    assert json.load(refused.value)["type"] == "error"
