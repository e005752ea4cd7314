"""Budgets: the file, the windows, the worst case reserved before a call, refusal, settlement and alerts.

Calls go through the real openai SDK to the loopback FakeOpenAI, with the real OTel SDK recording spans.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

import costspan
from costspan import semconv
from costspan.budgets.guard import (
    Budget,
    BudgetAlert,
    BudgetExceeded,
    BudgetFileError,
    BudgetGuard,
    BudgetUnavailable,
    PromptTooLarge,
    load_budget_guard,
    window_at,
)
from costspan.budgets.ledger import MemoryLedger, RedisLedger, SQLiteLedger, to_nano
from costspan.pricing.pricer import Pricer
from costspan.providers.openai.fake import FakeOpenAI, Scripted
from costspan.providers.openai.limits import estimate_input_tokens
from costspan.usage import Usage
from tests.conftest import Pipeline, make_pipeline
from tests.ports import free_port

UTC = UTC
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Summarize the quarterly numbers."}  # 32 characters
]


def guarded(instrumented: list[Pipeline], guard: BudgetGuard) -> Pipeline:
    pipeline = make_pipeline(guards=[guard])
    instrumented.append(pipeline)
    return pipeline


def chat(client: openai.OpenAI, max_tokens: int | None = 48) -> Any:
    extra = {"max_tokens": max_tokens} if max_tokens is not None else {}
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **extra)  # type: ignore[call-overload]


# --- windows ---------------------------------------------------------------------------------------------------


def test_windows_are_calendar_aligned_in_their_time_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 3, 31, 22, 30, tzinfo=UTC)  # 00:30 on 1 April in Berlin (CEST, UTC+2)
    monthly = window_at("monthly", now, berlin)
    assert monthly.start == datetime(2026, 4, 1, tzinfo=berlin)
    assert monthly.end == datetime(2026, 5, 1, tzinfo=berlin)
    assert window_at("monthly", now, ZoneInfo("UTC")).start == datetime(2026, 3, 1, tzinfo=UTC)
    daily = window_at("daily", now, berlin)
    assert (daily.start, daily.end) == (datetime(2026, 4, 1, tzinfo=berlin), datetime(2026, 4, 2, tzinfo=berlin))
    december = window_at("monthly", datetime(2026, 12, 15, tzinfo=UTC), ZoneInfo("UTC"))
    assert december.end == datetime(2027, 1, 1, tzinfo=UTC)


def test_windows_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 29 March 2026: clocks go from 02:00 to 03:00, so that day lasts 23 hours.
    day = window_at("daily", datetime(2026, 3, 29, 12, tzinfo=UTC), berlin)
    assert (day.end.astimezone(UTC) - day.start.astimezone(UTC)).total_seconds() == 23 * 3600
    hour = window_at("hourly", datetime(2026, 3, 29, 0, 30, tzinfo=UTC), berlin)  # 01:30 CET
    assert hour.start.astimezone(UTC) == datetime(2026, 3, 29, 0, tzinfo=UTC)
    assert hour.end.astimezone(UTC) == datetime(2026, 3, 29, 1, tzinfo=UTC)  # 03:00 CEST: still one hour


# --- the budget file -----------------------------------------------------------------------------------------------


BUDGET_TOML = """
ledger = "memory"
timezone = "Europe/Berlin"
on_ledger_error = "closed"
max_output_tokens = 2000
prompt_warn_tokens = 1000

[[budget]]
customer_id = "*"
window = "monthly"
limit_usd = 5

[[budget]]
name = "acme gets more"
customer_id = "acme"
window = "monthly"
limit_usd = "50.00"
alert_thresholds = [0.5, 0.9]

[[budget]]
customer_id = "acme"
feature = "search"
window = "daily"
limit_usd = 1.25
timezone = "America/New_York"
"""


def test_budget_file_toml(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(BUDGET_TOML)
    guard = load_budget_guard(path)
    assert not caplog.records
    assert isinstance(guard.ledger, MemoryLedger)
    assert guard.fail_closed
    assert guard.max_output_tokens == 2000
    assert guard.prompt_warn_tokens == 1000
    every, acme, search = guard.budgets
    assert every.scope == {"customer_id": "*"}
    assert every.tz == ZoneInfo("Europe/Berlin")
    assert every.thresholds == (Decimal("0.8"), Decimal("1"))
    assert acme.limit_usd == Decimal("50.00")
    assert acme.name == "acme gets more"
    assert acme.thresholds == (Decimal("0.5"), Decimal("0.9"))
    assert search.scope == {"customer_id": "acme", "feature": "search"}
    assert search.tz == ZoneInfo("America/New_York")
    assert search.limit_usd == Decimal("1.25")

    # The exact entry wins over "*" for acme; other customers each get the "*" cap; both keys match search.
    assert [b.name for b, _ in guard.matching({"customer_id": "acme", "feature": "search"})] == [
        "acme gets more",
        search.name,
    ]
    assert [(b.limit_usd, s) for b, s in guard.matching({"customer_id": "zed"})] == [
        (Decimal(5), {"customer_id": "zed"})
    ]
    assert guard.matching({"feature": "search"}) == []


def test_budget_file_yaml(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text("ledger: memory\nbudget:\n  - feature: chat\n    window: hourly\n    limit_usd: 2\n")
    (budget,) = load_budget_guard(path).budgets
    assert (budget.scope, budget.window, budget.limit_usd) == ({"feature": "chat"}, "hourly", Decimal(2))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[budget]]\nwindow = 'monthly'\nlimit_usd = 1\n", "scope it on one or more of"),
        ("[[budget]]\ncustomer_id = 'a'\nwindow = 'weekly'\nlimit_usd = 1\n", "window must be one of"),
        ("[[budget]]\ncustomer_id = 'a'\n", "limit_usd is required"),
        ("[[budget]]\ncustomer_id = 'a'\nlimit_usd = -1\n", "non-negative"),
        ("[[budget]]\ncustomer_id = 'a'\nlimit_usd = 1\ntimezone = 'Mars/Olympus'\n", "unknown time zone"),
        ("[[budget]]\ncustomer_id = 'a'\nlimit_usd = 1\ncap = 3\n", "unknown key"),
        ("on_ledger_error = 'maybe'\n", 'must be "open" or "closed"'),
        ("ledger = '$COSTSPAN_TEST_UNSET_VAR'\n", "COSTSPAN_TEST_UNSET_VAR is not set"),
        ("this is not toml", "is not valid TOML"),
    ],
)
def test_bad_budget_files_say_what_to_fix(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(text)
    with pytest.raises(BudgetFileError, match=message):
        load_budget_guard(path)


def test_a_removed_setting_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text('ledger = "memory"\ndefault_max_output_tokens = 4096\n')
    with caplog.at_level(logging.WARNING, logger="costspan"):
        load_budget_guard(path)
    assert "default_max_output_tokens is no longer used" in caplog.text


def test_ledger_url_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_LEDGER", f"sqlite://{tmp_path}/ledger.sqlite3")
    path = tmp_path / "budgets.toml"
    path.write_text('ledger = "$MY_LEDGER"\n')
    guard = load_budget_guard(path)
    assert isinstance(guard.ledger, SQLiteLedger)
    assert guard.ledger.path == tmp_path / "ledger.sqlite3"


# --- the worst case -------------------------------------------------------------------------------------------------


def test_input_estimate_is_local() -> None:
    # 32 characters of content + "role" "user" "content" (15) = 47 -> 12 tokens, + 3 x (1 message + priming).
    assert estimate_input_tokens({"messages": MESSAGES}) == 12 + 6
    # An inline image counts as a fixed allowance, not as its base64 length.
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}
    with_image = estimate_input_tokens({"messages": [{"role": "user", "content": [image]}]})
    assert 1_600 < with_image < 1_700
    assert estimate_input_tokens({"input": "x" * 400, "instructions": "y" * 40}) == 110 + 3


def test_worst_case_dollars_by_hand(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    ledger = MemoryLedger()
    budget = Budget({"customer_id": "acme"}, "monthly", Decimal(10))
    guarded(instrumented, BudgetGuard([budget], ledger, max_output_tokens=5000))
    seen = reservations(ledger)
    with costspan.attribute(customer_id="acme"):
        chat(client, max_tokens=48)
        chat(client, max_tokens=None)  # no limit: the most gpt-4o-mini can write
        chat(client, max_tokens=10_000_000)  # absurd: the same
        client.chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=MESSAGES)  # a snapshot: its family
        client.chat.completions.create(model="gpt-5.5", messages=MESSAGES)  # not in the table: max_output_tokens
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, max_completion_tokens=10**9)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=48, n=3)  # 3 completions
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x" * 40, max_tokens=10, n=2, best_of=5)
    # gpt-4o-mini: $0.15 input, $0.60 output per million; 18 input tokens estimated; at most 16,384 output tokens.
    # gpt-5.5: $5 input, $30 output per million; not in the ceiling table, so max_output_tokens = 5,000.
    # gpt-4.1: $2 input, $8 output per million; at most 32,768 output tokens.
    # gpt-3.5-turbo-instruct: $1.50 input, $2.00 output per million; 40 characters are 10 tokens, + 3.
    assert seen == [
        to_nano(Decimal(18 * 15 + 48 * 60) / 100_000_000),  # $0.00003150
        to_nano(Decimal(18 * 15 + 16_384 * 60) / 100_000_000),  # $0.0098331
        to_nano(Decimal(18 * 15 + 16_384 * 60) / 100_000_000),
        to_nano(Decimal(18 * 15 + 16_384 * 60) / 100_000_000),
        to_nano(Decimal(18 * 500 + 5_000 * 3_000) / 100_000_000),  # $0.15009
        to_nano(Decimal(18 * 200 + 32_768 * 800) / 100_000_000),  # $0.2621800
        to_nano(Decimal(18 * 15 + 3 * 48 * 60) / 100_000_000),
        to_nano(Decimal(13 * 150 + 5 * 10 * 200) / 100_000_000),  # best_of=5 completions are billed
    ]
    assert seen[0] == 31_500


def reservations(ledger: MemoryLedger) -> list[int]:
    """The amounts the guard reserves in this ledger, in order."""
    seen: list[int] = []
    original = ledger.reserve

    def spy(key: str, amount: int, cap: int, expires_at: float) -> Any:
        seen.append(amount)
        return original(key, amount, cap, expires_at)

    ledger.reserve = spy  # type: ignore[method-assign]
    return seen


NOV_5 = datetime(2026, 11, 5, 10, tzinfo=UTC)  # after the tier and batch rates of the frozen data start (12/14 Oct)


def acme_guard(instrumented: list[Pipeline], cap: Decimal = Decimal(10)) -> tuple[MemoryLedger, list[int]]:
    ledger = MemoryLedger()
    guarded(instrumented, BudgetGuard([Budget({"customer_id": "acme"}, "monthly", cap)], ledger, clock=lambda: NOV_5))
    return ledger, reservations(ledger)


def test_image_generation_reserves_its_image_output_tokens(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    """It reserved the prompt alone ($0.000035) for a call that costs $0.042275."""
    ledger, seen = acme_guard(instrumented)
    with costspan.attribute(customer_id="acme"):
        client.images.generate(model="gpt-image-1", prompt="a cat in a hat", size="1024x1024", quality="medium")
        client.images.generate(model="gpt-image-1", prompt="a cat in a hat", size="1536x1024", quality="high", n=2)
        client.images.generate(model="gpt-image-1", prompt="a cat in a hat")  # size and quality "auto"
    # gpt-image-1: $5 per million text input, $40 per million output (image) tokens. The prompt is 14 characters:
    # 4 tokens, + 3. Image output tokens: medium 1024x1024 = 1,056; high 1536x1024 = 6,208; the most of any
    # size and quality (high 1024x1536) = 6,240.
    assert seen == [
        to_nano(Decimal(7 * 5 + 1_056 * 40) / 1_000_000),  # $0.042275
        to_nano(Decimal(7 * 5 + 2 * 6_208 * 40) / 1_000_000),  # $0.496675
        to_nano(Decimal(7 * 5 + 6_240 * 40) / 1_000_000),  # $0.249635
    ]
    assert seen[0] == 42_275_000
    # The fake bills 6 input and 1,056 output tokens each: 3 x (6 x $5 + 1,056 x $40) per million.
    (key,) = ledger._counters
    assert ledger.totals(key).settled == ledger.totals(key).used == 3 * 42_270_000


def test_audio_output_reserves_at_the_audio_rate(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    """It reserved $0.0101 (all output at the text rate) for a call that costs $0.0641."""
    ledger, seen = acme_guard(instrumented)
    fake_openai.script(
        Scripted(
            usage={
                "prompt_tokens": 40,
                "completion_tokens": 1_000,
                "total_tokens": 1_040,
                "completion_tokens_details": {"audio_tokens": 1_000},
            }
        )
    )
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * 121}]
    assert estimate_input_tokens({"messages": messages}) == 40  # (121 + 15) / 4 = 34, + 3 x 2
    with costspan.attribute(customer_id="acme"):
        client.chat.completions.create(
            model="gpt-audio",
            messages=messages,
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"},
            max_completion_tokens=1_000,
        )
    # gpt-audio: $2.50 per million text input, $64 per million audio output (text output: $10).
    assert seen == [to_nano(Decimal(40 * 250 + 1_000 * 6_400) / 100_000_000)]  # $0.0641
    (key,) = ledger._counters
    assert ledger.totals(key).settled == 64_100_000  # 40 x $2.50 + 1,000 x $64 per million, as billed


def test_service_tiers_reserve_the_dearest_rate_they_can_run_at(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    _, seen = acme_guard(instrumented)
    cases: list[tuple[str, Literal["auto", "default", "flex"]]] = [
        ("gpt-4o-mini", "auto"),  # may run at priority
        ("gpt-4o-mini", "default"),
        ("gpt-4o-mini", "flex"),  # no flex price for gpt-4o-mini: the standard one
        ("gpt-5", "flex"),
        ("gpt-5-nano", "auto"),  # no priority price for gpt-5-nano: the standard one
    ]
    with costspan.attribute(customer_id="acme"):
        for model, tier in cases:
            client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=100, service_tier=tier)
    # 18 input tokens estimated, 100 output tokens allowed. Per million (input, output): gpt-4o-mini standard
    # $0.15 / $0.60, priority $0.25 / $1; gpt-5 flex $0.625 / $5; gpt-5-nano standard $0.05 / $0.40.
    assert seen == [
        to_nano(Decimal(18 * 25 + 100 * 100) / 100_000_000),  # $0.0001045 (standard: $0.0000627)
        to_nano(Decimal(18 * 15 + 100 * 60) / 100_000_000),
        to_nano(Decimal(18 * 15 + 100 * 60) / 100_000_000),
        to_nano(Decimal(18 * 625 + 100 * 5_000) / 1_000_000_000),  # $0.00051125 (standard: $0.0010225)
        to_nano(Decimal(18 * 5 + 100 * 40) / 100_000_000),
    ]


def test_calls_without_an_output_limit_cannot_carry_the_ledger_past_the_cap(
    client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    """Eight concurrent gpt-4o-mini calls without max_tokens, each writing 16,000 tokens. They reserved 4,096 output
    tokens each ($0.0024603), so four fit under a $0.01 cap together and settled at 3.8x it. Now each reserves
    what gpt-4o-mini can write (16,384 tokens: $0.0098331), so one at a time fits."""
    ledger, _ = acme_guard(instrumented, cap=Decimal("0.01"))
    usage = {"prompt_tokens": 18, "completion_tokens": 16_000, "total_tokens": 16_018}
    with FakeOpenAI(latency_s=0.3) as slow:  # every call is admitted before any settles
        slow.script(*(Scripted(usage=usage) for _ in range(8)))
        slow_client = openai.OpenAI(base_url=slow.base_url, api_key="sk-test-not-a-secret", max_retries=0)

        def call(_: int) -> bool:
            with costspan.attribute(customer_id="acme"):
                try:
                    chat(slow_client, max_tokens=None)
                except BudgetExceeded:
                    return False
                return True

        with ThreadPoolExecutor(8) as pool:
            admitted = sum(pool.map(call, range(8)))
        assert admitted == len(slow.received) == 1
    (key,) = ledger._counters
    one_call = 18 * 150 + 16_000 * 600  # nano-dollars: 18 x $0.15 + 16,000 x $0.60 per million = $0.0096027
    assert ledger.totals(key).settled == one_call
    assert ledger.totals(key).settled <= to_nano(Decimal("0.01")) + one_call  # the cap holds within one call


# --- refusal and settlement --------------------------------------------------------------------------------


def test_refused_before_sending_and_the_span_says_why(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    guard = BudgetGuard([Budget({"customer_id": "acme"}, "monthly", Decimal("0.00001"))], MemoryLedger())
    pipeline = guarded(instrumented, guard)
    with costspan.attribute(customer_id="acme"), pytest.raises(costspan.BudgetExceeded) as refused:
        chat(client)
    assert fake_openai.received == []  # nothing was sent
    exc = refused.value
    assert exc.error_code == "monthly_ai_quota_exceeded"
    assert exc.retry_after_s is not None and 0 < exc.retry_after_s <= 31 * 86400
    assert "raise the cap" in str(exc)
    span = pipeline.span()
    assert span.attributes is not None
    assert span.attributes[semconv.COSTSPAN_REFUSED] == "BudgetExceeded"
    assert span.attributes[semconv.ERROR_TYPE] == "BudgetExceeded"
    (event,) = [e for e in span.events if e.name == semconv.EVENT_BUDGET_EXCEEDED]
    assert event.attributes is not None
    assert event.attributes[semconv.COSTSPAN_BUDGET_LIMIT_USD] == 0.00001
    assert event.attributes[semconv.COSTSPAN_BUDGET_RESERVED_USD] == pytest.approx(0.0000315)


def test_settles_to_the_real_cost_and_errors_to_zero(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    ledger = MemoryLedger()
    guard = BudgetGuard([Budget({"customer_id": "acme"}, "monthly", Decimal(1))], ledger)
    guarded(instrumented, guard)
    fake_openai.script(
        Scripted(usage={"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}),
        Scripted(status=500),
    )
    with costspan.attribute(customer_id="acme"):
        chat(client)
        with pytest.raises(openai.InternalServerError):
            chat(client)
    key = next(iter(ledger._counters))
    # 1000 x $0.15/M + 100 x $0.60/M = $0.000210, and the failed call counts nothing.
    assert ledger.totals(key).settled == 210_000
    assert ledger.totals(key).used == 210_000


def test_a_stream_closed_before_its_usage_keeps_the_worst_case(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    ledger = MemoryLedger()
    guarded(instrumented, BudgetGuard([Budget({"customer_id": "acme"}, "monthly", Decimal(1))], ledger))
    with costspan.attribute(customer_id="acme"):
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=48, stream=True)
        next(iter(stream))
        stream.close()
    (key,) = ledger._counters
    assert ledger.totals(key).settled == 31_500  # the worst case: billed, by an unknown amount


def test_calls_billed_by_an_unknown_amount_keep_the_worst_case(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    """An answer without usage, and a stream whose connection drops midway, were billed all the same: both keep
    their worst case ($0.0000315 each, see above). A call that failed before any answer counts nothing."""
    ledger = MemoryLedger()
    pipeline = guarded(instrumented, BudgetGuard([Budget({"customer_id": "acme"}, "monthly", Decimal(1))], ledger))
    fake_openai.script(Scripted(omit_usage=True), Scripted(cut_after=1), Scripted(status=400))
    with costspan.attribute(customer_id="acme"):
        chat(client)
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=48, stream=True)
        with pytest.raises(openai.APIConnectionError):  # the connection dropped midway
            list(stream)
        with pytest.raises(openai.BadRequestError):
            chat(client)
    (key,) = ledger._counters
    assert ledger.totals(key).settled == ledger.totals(key).used == 2 * 31_500
    statuses = [(s.attributes or {})[semconv.COSTSPAN_PRICING_STATUS] for s in pipeline.spans()]
    assert statuses == ["no_usage", "incomplete", "no_usage"]


def test_a_customer_and_a_feature_cap_both_hold(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    ledger = MemoryLedger()
    budgets = [
        Budget({"customer_id": "*"}, "daily", Decimal(1)),
        Budget({"feature": "search"}, "daily", Decimal("0.00005")),  # one call's worst case is $0.0000315
    ]
    guarded(instrumented, BudgetGuard(budgets, ledger))
    with costspan.attribute(customer_id="acme", feature="search"):
        chat(client)
        with pytest.raises(BudgetExceeded, match="feature=search"):
            chat(client)
    customer_key = next(k for k in ledger._counters if k.startswith("customer_id=acme"))
    # The refused call's customer reservation was released.
    assert ledger.totals(customer_key).used == ledger.totals(customer_key).settled > 0


def test_unattributed_and_uncapped_calls_pass(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    ledger = MemoryLedger()
    guarded(instrumented, BudgetGuard([Budget({"customer_id": "acme"}, "monthly", Decimal(0))], ledger))
    chat(client)  # no customer_id: no budget covers it
    with costspan.attribute(customer_id="other"):
        chat(client)
    assert ledger._counters == {}


def test_a_finished_batch_job_is_charged_to_its_creators_budget(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    """A $0.018 batch created by acme left acme's ledger at $0 against a $0.01 cap, and admitted the next call."""
    ledger = MemoryLedger()
    guard = BudgetGuard([Budget({"customer_id": "acme"}, "monthly", Decimal("0.01"))], ledger)
    guarded(instrumented, guard)
    with costspan.attribute(customer_id="acme"):
        batch = client.batches.create(
            input_file_id="file-abc", endpoint="/v1/chat/completions", completion_window="24h"
        )
    # Polled without baggage: the job is attributed from the metadata costspan set at creation.
    assert client.batches.retrieve(batch.id).status == "in_progress"
    assert client.batches.retrieve(batch.id).status == "completed"
    client.batches.retrieve(batch.id)  # recorded, and charged, once
    (key,) = ledger._counters
    # gpt-4o-mini at batch rates (frozen genai-prices 0.2.5, from 2026-10-14): $0.075 input, $0.30 output per
    # million. 120,000 x 0.075 + 30,000 x 0.30 = 9,000 + 9,000 micro-dollars = $0.018.
    assert ledger.totals(key).settled == ledger.totals(key).used == 18_000_000
    guard.charge({"customer_id": "acme"}, f"batch {batch.id}", None)  # nothing billed: nothing counted
    with costspan.attribute(customer_id="acme"), pytest.raises(BudgetExceeded):
        chat(client)
    assert [r.path for r in fake_openai.received] == ["/v1/batches"]


def test_a_charge_counts_once_across_replicas() -> None:
    """Two replicas polling the same finished job share the ledger; the job counts once."""
    ledger = MemoryLedger()
    budget = Budget({"customer_id": "acme"}, "monthly", Decimal("0.01"))
    cost = Pricer().price(Usage(1_000, 100), "gpt-4o-mini", at=NOV_5)  # 1,000 x $0.15 + 100 x $0.60 per million
    for _replica in range(2):
        BudgetGuard([budget], ledger).charge({"customer_id": "acme"}, "batch batch_1", cost)
    (key,) = ledger._counters
    assert ledger.totals(key).settled == 210_000


# --- alerts ----------------------------------------------------------------------------------------------------


def test_alerts_fire_once_per_window(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline], caplog: pytest.LogCaptureFixture
) -> None:
    now = [datetime(2026, 11, 5, 10, tzinfo=UTC)]
    alerts: list[BudgetAlert] = []
    # Each call costs $0.000210 exactly (scripted), worst case $0.0000315 + ... -> cap for ~10 calls.
    budget = Budget({"customer_id": "acme"}, "daily", Decimal("0.0021"))
    guard = BudgetGuard([budget], MemoryLedger(), on_alert=alerts.append, clock=lambda: now[0])
    pipeline = guarded(instrumented, guard)
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}

    def spend(calls: int) -> int:
        refused = 0
        for _ in range(calls):
            fake_openai.script(Scripted(usage=usage))
            try:
                with costspan.attribute(customer_id="acme"):
                    chat(client, max_tokens=100)
            except BudgetExceeded:
                refused += 1
        fake_openai.state.script.clear()
        return refused

    with caplog.at_level(logging.WARNING, logger="costspan"):
        refused = spend(30)
    assert refused > 0
    assert [a.percent for a in alerts] == ["80%", "100%"]
    assert alerts[0].spent_usd == Decimal("0.00168")  # the 8th call of $0.00021 crossed 80% of $0.0021
    assert len([r for r in caplog.records if "reached 80%" in r.getMessage()]) == 1
    events = [e for s in pipeline.spans() for e in s.events if e.name == semconv.EVENT_BUDGET_ALERT]
    assert len(events) == 2

    now[0] = datetime(2026, 11, 6, 10, tzinfo=UTC)  # the next day: a new window, alerts fire again
    spend(30)
    assert [a.percent for a in alerts] == ["80%", "100%", "80%", "100%"]
    assert alerts[2].window.start == datetime(2026, 11, 6, tzinfo=UTC)


# --- guardrails ------------------------------------------------------------------------------------------------


def test_large_prompt_event_warning_and_refusal(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline], caplog: pytest.LogCaptureFixture
) -> None:
    guard = BudgetGuard([], MemoryLedger(), prompt_warn_tokens=1_000, prompt_refuse_tokens=5_000)
    pipeline = guarded(instrumented, guard)
    big: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * 8_000}]  # about 2,000 tokens
    huge: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * 40_000}]  # about 10,000 tokens
    with caplog.at_level(logging.WARNING, logger="costspan"):
        client.chat.completions.create(model="gpt-4o-mini", messages=big)
        client.chat.completions.create(model="gpt-4o-mini", messages=big)
        with pytest.raises(PromptTooLarge, match="prompt_refuse_tokens"):
            client.chat.completions.create(model="gpt-4o-mini", messages=huge)
    assert len(fake_openai.received) == 2
    spans = pipeline.spans()
    assert all(any(e.name == semconv.EVENT_PROMPT_LARGE for e in s.events) for s in spans)
    assert len([r for r in caplog.records if "crossed prompt_warn_tokens" in r.getMessage()]) == 1  # rate-limited
    assert spans[2].attributes is not None
    assert spans[2].attributes[semconv.COSTSPAN_REFUSED] == "PromptTooLarge"


# --- the ledger is down ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_ledger_down(policy: str, fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]) -> None:
    dead = RedisLedger.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    reader = InMemoryMetricReader()
    guard = BudgetGuard(
        [Budget({"customer_id": "*"}, "monthly", Decimal(1))],
        dead,
        on_ledger_error=policy,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    pipeline = guarded(instrumented, guard)
    with costspan.attribute(customer_id="acme"):
        if policy == "open":
            chat(client)
            assert len(fake_openai.received) == 1
        else:
            with pytest.raises(BudgetUnavailable, match="unreachable"):
                chat(client)
            assert fake_openai.received == []
    assert guard.ledger_errors == 1
    assert any(e.name == semconv.EVENT_BUDGET_LEDGER_ERROR for e in pipeline.span().events)
    data = reader.get_metrics_data()
    assert data is not None
    (point,) = [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == semconv.METRIC_BUDGET_LEDGER_ERRORS
        for p in m.data.data_points
    ]
    assert isinstance(point, NumberDataPoint)
    assert point.value == 1
    assert point.attributes == {semconv.ERROR_TYPE: "ConnectionError", semconv.COSTSPAN_BUDGET_OPERATION: "reserve"}


# --- configured by environment variable -----------------------------------------------------------------------


def test_budget_file_from_the_environment(
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    instrumented: list[Pipeline],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(f'ledger = "sqlite://{tmp_path}/ledger.sqlite3"\n[[budget]]\ncustomer_id = "*"\nlimit_usd = 0\n')
    monkeypatch.setenv("OTEL_COSTSPAN_BUDGET_FILE", str(path))
    instrumented.append(make_pipeline())
    with costspan.attribute(customer_id="acme"), pytest.raises(BudgetExceeded):
        chat(client)


def test_a_broken_budget_file_is_reported_and_calls_go_on(
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    instrumented: list[Pipeline],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OTEL_COSTSPAN_BUDGET_FILE", str(tmp_path / "missing.toml"))
    with caplog.at_level(logging.ERROR, logger="costspan"):
        instrumented.append(make_pipeline())
    assert any("budgets are OFF" in r.getMessage() for r in caplog.records)
    chat(client)
