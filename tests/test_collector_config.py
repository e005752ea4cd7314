"""Static checks of the OpenTelemetry Collector configs in collector-config/.

No otelcol-contrib binary can be installed here (it is not on PyPI, Debian or npm), so these configs are not run.
What can be checked without it is checked: YAML structure, every component type against the otelcol-contrib
distribution's manifest, every pipeline referencing only defined components (and every defined component being
used), processor order, and that the config names the same attributes and tables as costspan and the ClickHouse
DDL. Run ``otelcol-contrib validate --config ...`` before deploying.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from costspan import semconv

CONFIG_DIR = Path(__file__).resolve().parents[1] / "collector-config"
CONFIGS = ["otelcol-contrib.yaml", "otelcol-contrib-loadbalancing.yaml"]

# Component type names (the key used in a config) of the otelcol-contrib modules these configs use. Source: the
# distribution's manifest, open-telemetry/opentelemetry-collector-releases
# distributions/otelcol-contrib/manifest.yaml (v0.136.0), module name -> its factory's type.
CONTRIB_COMPONENTS: dict[str, dict[str, str]] = {
    "receivers": {"otlp": "go.opentelemetry.io/collector/receiver/otlpreceiver"},
    "processors": {
        "batch": "go.opentelemetry.io/collector/processor/batchprocessor",
        "memory_limiter": "go.opentelemetry.io/collector/processor/memorylimiterprocessor",
        "transform": "github.com/open-telemetry/opentelemetry-collector-contrib/processor/transformprocessor",
        "attributes": "github.com/open-telemetry/opentelemetry-collector-contrib/processor/attributesprocessor",
        "filter": "github.com/open-telemetry/opentelemetry-collector-contrib/processor/filterprocessor",
        "resource": "github.com/open-telemetry/opentelemetry-collector-contrib/processor/resourceprocessor",
    },
    "exporters": {
        "clickhouse": "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/clickhouseexporter",
        "otlp": "go.opentelemetry.io/collector/exporter/otlpexporter",
        "otlphttp": "go.opentelemetry.io/collector/exporter/otlphttpexporter",
        "prometheus": "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/prometheusexporter",
        "prometheusremotewrite": (
            "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/prometheusremotewriteexporter"
        ),
        "loadbalancing": "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/loadbalancingexporter",
        "debug": "go.opentelemetry.io/collector/exporter/debugexporter",
    },
    "extensions": {
        "health_check": "github.com/open-telemetry/opentelemetry-collector-contrib/extension/healthcheckextension",
        "file_storage": "github.com/open-telemetry/opentelemetry-collector-contrib/extension/storage/filestorage",
        "pprof": "github.com/open-telemetry/opentelemetry-collector-contrib/extension/pprofextension",
        "zpages": "go.opentelemetry.io/collector/extension/zpagesextension",
    },
}
SIGNALS = {"traces", "metrics", "logs"}


def load(name: str) -> dict[str, Any]:
    config = yaml.safe_load((CONFIG_DIR / name).read_text())
    assert isinstance(config, dict)
    return config


def component_type(component_id: str) -> str:
    """``type[/name]`` -> ``type``, the collector's component ID syntax."""
    assert re.fullmatch(r"[a-z_]+(/[\w.-]+)?", component_id), f"not a component id: {component_id!r}"
    return component_id.split("/", 1)[0]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_component_is_a_real_contrib_component(name: str) -> None:
    config = load(name)
    assert set(config) <= {"receivers", "processors", "exporters", "extensions", "connectors", "service"}
    for kind, known in CONTRIB_COMPONENTS.items():
        for component_id in config.get(kind) or {}:
            assert component_type(component_id) in known, f"{name}: {kind} {component_id!r} is not in otelcol-contrib"


@pytest.mark.parametrize("name", CONFIGS)
def test_pipelines_use_defined_components_and_every_component_is_used(name: str) -> None:
    config = load(name)
    service = config["service"]
    used: dict[str, set[str]] = {kind: set() for kind in ("receivers", "processors", "exporters")}
    for pipeline_id, pipeline in service["pipelines"].items():
        assert component_type(pipeline_id) in SIGNALS, pipeline_id
        assert pipeline.get("receivers") and pipeline.get("exporters"), f"{pipeline_id} needs receivers and exporters"
        for kind in used:
            for component_id in pipeline.get(kind) or []:
                assert component_id in (config.get(kind) or {}), f"{name}: {pipeline_id} uses undefined {component_id}"
                used[kind].add(component_id)
        processors = pipeline.get("processors") or []
        assert processors[:1] == ["memory_limiter"], f"{pipeline_id}: memory_limiter must come first"
        assert "batch" not in processors or processors[-1] == "batch", f"{pipeline_id}: batch must come last"
    for kind, ids in used.items():
        assert ids == set(config.get(kind) or {}), f"{name}: defined but unused {kind}: {set(config[kind]) - ids}"
    assert set(service.get("extensions") or []) == set(config.get("extensions") or {})
    for exporter in config["exporters"].values():
        storage = ((exporter or {}).get("sending_queue") or {}).get("storage")
        assert storage is None or storage in config["extensions"], f"{name}: queue storage {storage} undefined"


# Settings keys of the components configured here, from each component's config.go (mapstructure tags) in
# opentelemetry-collector(-contrib); exporterhelper's timeout, retry_on_failure and sending_queue included.
KNOWN_KEYS: dict[str, set[str]] = {
    "memory_limiter": {"check_interval", "limit_mib", "spike_limit_mib", "limit_percentage", "spike_limit_percentage"},
    "batch": {"timeout", "send_batch_size", "send_batch_max_size", "metadata_keys", "metadata_cardinality_limit"},
    "transform": {"error_mode", "trace_statements", "metric_statements", "log_statements", "flatten_data"},
    "clickhouse": {
        "endpoint", "username", "password", "database", "connection_params", "logs_table_name", "traces_table_name",
        "metrics_table_name", "metrics_tables", "ttl", "table_engine", "cluster_name", "create_schema",
        "async_insert", "timeout", "retry_on_failure", "sending_queue",
    },
    "loadbalancing": {"protocol", "resolver", "routing_key", "timeout", "retry_on_failure", "sending_queue"},
}  # fmt: skip


@pytest.mark.parametrize("name", CONFIGS)
def test_component_settings_are_known_keys(name: str) -> None:
    config = load(name)
    for kind in ("processors", "exporters"):
        for component_id, settings in (config.get(kind) or {}).items():
            known = KNOWN_KEYS.get(component_type(component_id))
            if known is not None:
                assert set(settings or {}) <= known, f"{name}: {component_id}: unknown {set(settings) - known}"
    protocols = config["receivers"]["otlp"]["protocols"]
    assert set(protocols) <= {"grpc", "http"}


def test_transform_keeps_every_cost_and_token_attribute_numeric() -> None:
    statements = load("otelcol-contrib.yaml")["processors"]["transform/cost"]["trace_statements"][0]["statements"]
    doubles = {
        semconv.GEN_AI_USAGE_COST_AMOUNT,
        semconv.COSTSPAN_COST_INPUT,
        semconv.COSTSPAN_COST_CACHE_READ,
        semconv.COSTSPAN_COST_CACHE_WRITE,
        semconv.COSTSPAN_COST_OUTPUT,
    }
    ints = {
        semconv.GEN_AI_USAGE_INPUT_TOKENS,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS,
        semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
        semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
        semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
    }
    pattern = re.compile(
        r'set\(attributes\["(?P<a>[\w.]+)"\], (?P<f>Double|Int)\(attributes\["(?P<b>[\w.]+)"\]\)\) '
        r'where attributes\["(?P<c>[\w.]+)"\] != nil'
    )
    converted: dict[str, str] = {}
    for statement in statements:
        match = pattern.fullmatch(statement)
        assert match, f"unexpected OTTL statement: {statement}"
        assert match["a"] == match["b"] == match["c"], statement
        converted[match["a"]] = match["f"]
    assert converted == {**dict.fromkeys(doubles, "Double"), **dict.fromkeys(ints, "Int")}


def test_clickhouse_exporter_writes_the_table_the_ddl_creates() -> None:
    exporter = load("otelcol-contrib.yaml")["exporters"]["clickhouse"]
    ddl = (CONFIG_DIR / "clickhouse" / "01_otel_traces.sql").read_text()
    assert f"CREATE TABLE IF NOT EXISTS {exporter['database']}.{exporter['traces_table_name']}" in ddl
    assert exporter["create_schema"] is False, "the view needs our DDL first; the exporter must not race it"
    assert "${env:" in exporter["password"], "no secrets in the file"


def test_loadbalancing_tier_routes_spans_by_trace_id() -> None:
    config = load("otelcol-contrib-loadbalancing.yaml")
    exporters = config["exporters"]
    traces = config["service"]["pipelines"]["traces"]["exporters"]
    assert [exporters[e]["routing_key"] for e in traces] == ["traceID"]
    for exporter in exporters.values():
        assert "endpoint" not in exporter["protocol"]["otlp"], "the resolver supplies the endpoints"
        assert set(exporter["resolver"]) <= {"dns", "static", "k8s", "aws_cloud_map"}


def test_trace_query_examples_name_only_attributes_costspan_writes() -> None:
    text = (CONFIG_DIR / "queries-traces.md").read_text()
    written = {v for k, v in vars(semconv).items() if k.isupper() and isinstance(v, str)}
    written |= set(semconv.DEFAULT_ATTRIBUTION_KEYS)
    traceql = set(re.findall(r"\bspan\.([a-z_][\w.]*[a-z_])", text))
    jaeger = set(re.findall(r"\| `((?:[\w.]+=\S+ ?)+)` \|", text))
    tags = {pair.split("=")[0] for row in jaeger for pair in row.split()} - {"error"}  # Jaeger's own error tag
    assert traceql and tags
    assert traceql <= written, traceql - written
    assert tags <= written, tags - written
