"""Prometheus alert rules on costspan's cost metric, unit-tested with the real ``promtool`` (Debian ``prometheus``).

The rules are written against the name the real OpenTelemetry Prometheus exporter gives the cost histogram; the
first test scrapes that exporter to prove it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from opentelemetry.sdk.metrics import MeterProvider

from costspan.instrumentation.metrics import CallMetrics
from tests.ports import free_port

PROMETHEUS_DIR = Path(__file__).resolve().parents[1] / "collector-config" / "prometheus"
RULES = PROMETHEUS_DIR / "costspan-alerts.yml"
TESTS = PROMETHEUS_DIR / "costspan-alerts.test.yml"
COST_SUM = "gen_ai_client_operation_cost_USD_sum"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is missing: install Debian's prometheus package (scripts/setup-system)")
    return path


def run_promtool(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_rules_use_the_name_the_python_exporter_exposes() -> None:
    exporter = pytest.importorskip("opentelemetry.exporter.prometheus")
    from prometheus_client import REGISTRY, generate_latest

    reader = exporter.PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        metrics = CallMetrics(provider.get_meter("costspan"))
        metrics.record(
            ("chat", "openai", None, None, None, None, None),
            {"feature": "search", "route": "/search", "environment": "production"},
            0.5,
            100,
            20,
            0.0125,
        )
        scraped = generate_latest(REGISTRY).decode()
    finally:
        provider.shutdown()
    (line,) = [line for line in scraped.splitlines() if line.startswith(COST_SUM + "{")]
    for label in ('feature="search"', 'route="/search"', 'environment="production"', 'gen_ai_operation_name="chat"'):
        assert label in line, line
    assert line.endswith(" 0.0125"), line
    exprs = [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    used = set(re.findall(r"\b(gen_ai_\w+)", "\n".join(exprs)))
    assert used == {COST_SUM}, f"rules use {used}, the exporter exposes {COST_SUM}"


LOST_SPAN_COUNTERS = {"otel_sdk_exporter_span_exported_total", "otel_sdk_processor_span_processed_total"}


def test_lost_span_rule_uses_the_names_the_sdk_exposes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real batch processor and OTLP exporter, pointed at a closed port, with the SDK's own metrics turned on:
    the lost spans show up under the names and label that LLMSpansLost reads."""
    exporter = pytest.importorskip("opentelemetry.exporter.prometheus")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from prometheus_client import REGISTRY, generate_latest

    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    meter_provider = MeterProvider(metric_readers=[exporter.PrometheusMetricReader()])
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(
                endpoint=f"http://127.0.0.1:{free_port()}/v1/traces", timeout=1, meter_provider=meter_provider
            ),
            meter_provider=meter_provider,
        )
    )
    try:
        for _ in range(3):
            tracer_provider.get_tracer("test").start_span("chat gpt-4o-mini").end()
        tracer_provider.force_flush()
        scraped = generate_latest(REGISTRY).decode()
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
    lost = [line for line in scraped.splitlines() if line.startswith("otel_sdk_exporter_span_exported_total{")]
    assert any('error_type="ConnectionError"' in line and line.endswith(" 3.0") for line in lost), scraped
    exposed = {line.split("{")[0] for line in scraped.splitlines() if line.startswith("otel_sdk_")}
    used = set(re.findall(r"\b(otel_sdk_\w+)", RULES.read_text()))
    assert used == LOST_SPAN_COUNTERS and used <= exposed, (used, exposed)


def test_rule_files_are_valid() -> None:
    result = run_promtool("check", "rules", RULES.name, "costspan-budgets.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass_for_every_alert() -> None:
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    tested = set(re.findall(r"alertname: (\w+)", TESTS.read_text()))
    assert alerts == tested == {"LLMHourlySpendSpike", "LLMRunawayRoute", "LLMBudgetBurnRate", "LLMSpansLost"}
    result = run_promtool("test", "rules", TESTS.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


# The series each test expects to stay silent, and the same series nudged just above the threshold.
JUST_ABOVE = [
    # The threshold is $0.150299 per 5 min (see the comment in the test file).
    ("'0+0.05x2026 101.4502+0.1502x13'", "'0+0.05x2026 101.4504+0.1504x13'", 'feature="chat"'),
    # The threshold is $2.51122 per 5 min.
    ("'0+0.25x2016 506.51+2.51x3'", "'0+0.25x2016 506.52+2.52x3'", 'route="/busy"'),
    # $0.0695 per 5 min is $5.004 per 6 h: burn rate 2.0016 against 2.
    ("'0+0.069x84'", "'0+0.0695x84'", 'customer_id="globex"'),
    # One more lost span, 5 minutes before the evaluation.
    ("'5x60'", "'5x15 6x45'", 'job="old-app"'),
]


@pytest.mark.parametrize(("below", "above", "label"), JUST_ABOVE, ids=["spike", "runaway", "budget", "lost"])
def test_silent_series_sit_just_below_the_threshold(tmp_path: Path, below: str, above: str, label: str) -> None:
    """Nudged just above its threshold, the silent series fires and the unit test fails: the margin is tight."""
    text = TESTS.read_text()
    assert text.count(below) == 1
    for name in ("costspan-alerts.yml", "costspan-budgets.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    (tmp_path / TESTS.name).write_text(text.replace(below, above))
    result = run_promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, f"{label} nudged above the threshold should have fired"
    assert label in result.stdout + result.stderr, result.stdout
