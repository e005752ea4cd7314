"""`opentelemetry-instrument python app.py` in a subprocess: `pip install costspan` alone is enough."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from costspan import semconv
from costspan.fakeopenai import FakeOpenAI
from tests.otlp_receiver import OtlpReceiver

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_instrumented(fake: FakeOpenAI, receiver: OtlpReceiver, *extra_args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "sk-test-not-a-secret",
        "OTEL_SERVICE_NAME": "quickstart",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }
    return subprocess.run(
        [str(BIN / "opentelemetry-instrument"), *extra_args, sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_opentelemetry_instrument_exports_priced_attributed_spans() -> None:
    with FakeOpenAI() as fake, OtlpReceiver() as receiver:
        result = run_instrumented(fake, receiver)
        assert result.returncode == 0, result.stderr
    llm_spans = [s for s in receiver.spans if s["attributes"].get(semconv.GEN_AI_OPERATION_NAME)]
    assert len(llm_spans) == 2, result.stderr
    by_customer = {s["attributes"]["customer_id"]: s for s in llm_spans}
    assert set(by_customer) == {"cust_4291", "cust_0007"}
    for span in llm_spans:
        a = span["attributes"]
        assert span["name"] == "chat gpt-4o-mini"
        assert span["resource"]["service.name"] == "quickstart"
        assert (a["feature"], a["route"], a["environment"]) == ("support-chat", "/api/v1/chat/answer", "prod")
        assert a[semconv.COSTSPAN_PRICING_STATUS] == "priced"
        input_tokens = a[semconv.GEN_AI_USAGE_INPUT_TOKENS]
        output_tokens = a[semconv.GEN_AI_USAGE_OUTPUT_TOKENS]
        # gpt-4o-mini: $0.15 input, $0.60 output per million (genai-prices 0.2.3); no cached tokens here.
        expected = (input_tokens * 0.15 + output_tokens * 0.60) / 1_000_000
        assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(expected, rel=1e-12)


def test_strict_attribution_flag_is_exposed_by_opentelemetry_instrument() -> None:
    """The env vars double as `opentelemetry-instrument` flags (opentelemetry_environment_variables)."""
    with FakeOpenAI() as fake, OtlpReceiver() as receiver:
        result = run_instrumented(
            fake, receiver, "--costspan_required_keys", "feature,team", "--costspan_on_missing", "raise"
        )
        assert result.returncode != 0
        assert "MissingAttributionError" in result.stderr and "team" in result.stderr
        assert fake.received == []  # refused before anything was sent
