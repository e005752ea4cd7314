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
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The child prices from the installed genai-prices release; this file states the rates its dollars come from.
PRICES = ROOT / "tests" / "data" / "gpt-4o-mini.toml"


def run_instrumented(fake: FakeOpenAI, receiver: OtlpReceiver, *extra_args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "sk-test-not-a-secret",
        "OTEL_SERVICE_NAME": "quickstart",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_COSTSPAN_PRICING_FILE": str(PRICES),
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
        # gpt-4o-mini: $0.15 input, $0.60 output per million (tests/data/gpt-4o-mini.toml); no cached tokens here.
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


# An app that ends by flushing: its span exports finish (or fail) before the last metric export reports them.
FLUSHING_APP = """
import runpy, sys
from opentelemetry import metrics, trace
runpy.run_path(sys.argv[1], run_name="__main__")
trace.get_tracer_provider().force_flush()
metrics.get_meter_provider().force_flush()
"""


def test_a_collector_that_is_down_never_stops_the_app_and_its_losses_are_counted(tmp_path: Path) -> None:
    """Traces go to a collector that is down (connection refused); metrics reach a working one. The app's calls
    all go through, it exits normally, and the SDK's own counter (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED)
    reports every lost span with its cause: what the LLMSpansLost alert in collector-config/prometheus reads."""
    app = tmp_path / "flushing_app.py"
    app.write_text(FLUSHING_APP)
    with FakeOpenAI() as fake, OtlpReceiver() as receiver:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "sk-test-not-a-secret",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/traces",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1",  # give up on the dead collector quickly
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": receiver.endpoint + "/v1/metrics",
            "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED": "true",
        }
        result = subprocess.run(
            [str(BIN / "opentelemetry-instrument"), sys.executable, str(app), str(ROOT / "examples" / "quickstart.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("Here is a concise answer") == 2  # the user's calls were answered
        assert len(fake.received) == 2
        assert "Failed to export spans batch" in result.stderr, result.stderr
        exported = "otel.sdk.exporter.span.exported"
        assert receiver.total(exported, **{"error.type": "ConnectionError"}) == receiver.total(exported) == 2
