"""`opentelemetry-instrument python app.py` in a subprocess: `pip install costspan` alone is enough."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from costspan import semconv
from costspan.instrumentation.distro import CostspanDistro
from costspan.providers.openai.fake import FakeOpenAI
from costspan.store.sqlite import Store
from tests.otlp_receiver import OtlpReceiver
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The child prices from the installed genai-prices release; this file states the rates its dollars come from.
PRICES = ROOT / "tests" / "data" / "gpt-4o-mini.toml"


def run_instrumented(fake: FakeOpenAI, receiver: OtlpReceiver, *extra_args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        # The test extra installs the httpx instrumentation; the spans counted here are costspan's.
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "httpx,httpx2",
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
            # The test extra installs the httpx instrumentation; the spans counted here are costspan's.
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "httpx,httpx2",
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


def run_store_only(
    fake: FakeOpenAI, store: Path, *extra_args: str, **env_vars: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """The README's store-only run, `opentelemetry-instrument --traces_exporter costspan`, with no collector
    named; returns the run and its wall seconds, interpreter start-up and exit included."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        # The test extra installs the httpx instrumentation; the spans counted here are costspan's.
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "httpx,httpx2",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "sk-test-not-a-secret",
        "COSTSPAN_STORE_PATH": str(store),
        **env_vars,
    }
    command = [str(BIN / "opentelemetry-instrument"), "--traces_exporter", "costspan", *extra_args]
    started = time.monotonic()
    result = subprocess.run(
        [*command, sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, time.monotonic() - started


def stored_customers(path: Path) -> set[str]:
    with Store(path) as store:
        rows = store.query("SELECT customer_id, cost_usd FROM spans")
    assert all(r["cost_usd"] > 0 for r in rows)
    return {r["customer_id"] for r in rows}


# What a run that reaches for a collector prints: "Transient error ... localhost:4318 ... refused", "Failed to
# export metrics batch due to timeout".
EXPORT_NOISE = re.compile(r"error|warn|fail|refused|timeout|export|4318", re.IGNORECASE)


def test_a_store_only_run_is_quiet(tmp_path: Path) -> None:
    """Before the distro's store-only default, this run sent metrics to localhost:4318: three connection-refused
    lines, a metrics timeout, and ~7 s of retries at exit. How long it takes now is measured with farm-bench
    (docs/store.md, "Store-only runs"), not here: a timed test on a shared machine measures the machine."""
    path = tmp_path / "store.sqlite3"
    with FakeOpenAI() as fake:
        result, _ = run_store_only(fake, path)
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if EXPORT_NOISE.search(line)], result.stderr
    assert stored_customers(path) == {"cust_4291", "cust_0007"}


def test_a_store_only_run_with_an_otlp_endpoint_still_exports_metrics(tmp_path: Path) -> None:
    """An endpoint names a collector: metrics go there as before (the SDK's own span counter stands in for them,
    as the receiver reads sums)."""
    path = tmp_path / "store.sqlite3"
    with FakeOpenAI() as fake, OtlpReceiver() as receiver:
        result, _ = run_store_only(
            fake,
            path,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED="true",
        )
        assert result.returncode == 0, result.stderr
    assert receiver.total("otel.sdk.span.started") >= 2
    assert receiver.spans == []  # traces went only to the store
    assert stored_customers(path) == {"cust_4291", "cust_0007"}


@pytest.mark.parametrize(
    ("env", "metrics"),
    [
        ({}, "otlp_proto_http"),  # traces default to OTLP too: a collector is expected
        ({"OTEL_TRACES_EXPORTER": "costspan"}, "none"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "none"),
        ({"OTEL_TRACES_EXPORTER": "none"}, "none"),
        ({"OTEL_TRACES_EXPORTER": "costspan, console"}, "none"),
        ({"OTEL_TRACES_EXPORTER": "costspan,otlp_proto_http"}, "otlp_proto_http"),
        ({"OTEL_TRACES_EXPORTER": "costspan", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "otlp_proto_http"),
        (
            {"OTEL_TRACES_EXPORTER": "costspan", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4318/v1/metrics"},
            "otlp_proto_http",
        ),
        # An explicit choice always wins, either way.
        ({"OTEL_TRACES_EXPORTER": "costspan", "OTEL_METRICS_EXPORTER": "otlp_proto_http"}, "otlp_proto_http"),
        ({"OTEL_TRACES_EXPORTER": "costspan", "OTEL_METRICS_EXPORTER": "prometheus"}, "prometheus"),
        ({"OTEL_METRICS_EXPORTER": "none"}, "none"),
    ],
)
def test_the_distro_turns_metrics_off_only_when_no_collector_is_named(env: dict[str, str], metrics: str) -> None:
    with mock.patch.dict(os.environ, env, clear=True):
        CostspanDistro()._configure()
        configured = dict(os.environ)
    assert configured == {
        "OTEL_TRACES_EXPORTER": "otlp_proto_http",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        **env,
        "OTEL_METRICS_EXPORTER": metrics,
    }
