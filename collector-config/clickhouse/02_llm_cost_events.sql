-- llm_cost_events: one typed row per costspan LLM call, the same columns as the embedded store.
-- Numbers are stored as numbers: the materialized view parses the exporter's strings once, on insert.
--
-- Exactly-once accounting over at-least-once delivery: a collector that retries an export, or a client that
-- re-sends after a timeout, writes the same span twice. Both copies share (trace_id, span_id), the sorting key of
-- this ReplacingMergeTree, so merges keep one; queries read with FINAL so unmerged copies never count twice
-- either. A call the application really made twice (its own retry) has two span ids and counts twice.
-- A finished Batch job is recorded by every process that reads it, each with its own span id but all in one trace
-- derived from the batch id: for those rows the key is the batch id, so the job counts once.
CREATE TABLE IF NOT EXISTS otel.llm_cost_events
(
    span_id String,
    trace_id String,
    parent_span_id String,
    timestamp DateTime64(9, 'UTC'),
    feature LowCardinality(String),
    route LowCardinality(String),
    customer_id String,
    environment LowCardinality(String),
    service LowCardinality(String),
    provider LowCardinality(String),
    operation LowCardinality(String),
    request_model LowCardinality(String),
    response_model LowCardinality(String),
    -- NULL means the response carried no usage (an error, a refusal): unknown, not zero. With usage, the parts
    -- (cached, cache-write, reasoning, audio, image) are 0 when absent.
    input_tokens Nullable(UInt64),
    cached_tokens Nullable(UInt64),
    cache_write_tokens Nullable(UInt64),
    output_tokens Nullable(UInt64),
    reasoning_tokens Nullable(UInt64),  -- already inside output_tokens: never add it again
    input_audio_tokens Nullable(UInt64),
    output_audio_tokens Nullable(UInt64),
    input_image_tokens Nullable(UInt64),
    output_image_tokens Nullable(UInt64),
    latency_ms Float64,
    -- NULL means costspan could not price the call (see pricing_status): never a guessed zero.
    cost_usd Nullable(Decimal(38, 18)),
    cost_input_usd Nullable(Decimal(38, 18)),
    cost_cache_read_usd Nullable(Decimal(38, 18)),
    cost_cache_write_usd Nullable(Decimal(38, 18)),
    cost_output_usd Nullable(Decimal(38, 18)),
    pricing_status LowCardinality(String),
    pricing_source LowCardinality(String),
    pricing_version LowCardinality(String),
    pricing_model LowCardinality(String),
    error_type LowCardinality(String),
    -- for reconciliation with the provider's usage and cost APIs
    request_id String,
    prompt_cache_key String,
    service_tier LowCardinality(String),
    batch_id String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (trace_id, if(operation = 'batch' AND batch_id != '' AND input_tokens IS NOT NULL, batch_id, span_id))
SETTINGS index_granularity = 8192;

-- Only costspan spans: they alone carry costspan.pricing.status. Other GenAI instrumentations of the same call
-- (which would double the spend) are left out.
CREATE MATERIALIZED VIEW IF NOT EXISTS otel.llm_cost_events_mv TO otel.llm_cost_events AS
WITH mapContains(SpanAttributes, 'gen_ai.usage.input_tokens') AS has_usage
SELECT
    SpanId AS span_id,
    TraceId AS trace_id,
    ParentSpanId AS parent_span_id,
    Timestamp AS timestamp,
    SpanAttributes['feature'] AS feature,
    SpanAttributes['route'] AS route,
    SpanAttributes['customer_id'] AS customer_id,
    SpanAttributes['environment'] AS environment,
    ServiceName AS service,
    SpanAttributes['gen_ai.provider.name'] AS provider,
    SpanAttributes['gen_ai.operation.name'] AS operation,
    SpanAttributes['gen_ai.request.model'] AS request_model,
    SpanAttributes['gen_ai.response.model'] AS response_model,
    toUInt64OrNull(SpanAttributes['gen_ai.usage.input_tokens']) AS input_tokens,
    if(has_usage, toUInt64OrZero(SpanAttributes['gen_ai.usage.cache_read.input_tokens']), NULL) AS cached_tokens,
    if(has_usage, toUInt64OrZero(SpanAttributes['gen_ai.usage.cache_creation.input_tokens']), NULL) AS cache_write_tokens,
    toUInt64OrNull(SpanAttributes['gen_ai.usage.output_tokens']) AS output_tokens,
    if(has_usage, toUInt64OrZero(SpanAttributes['gen_ai.usage.reasoning.output_tokens']), NULL) AS reasoning_tokens,
    if(has_usage, toUInt64OrZero(SpanAttributes['costspan.usage.input_audio_tokens']), NULL) AS input_audio_tokens,
    if(has_usage, toUInt64OrZero(SpanAttributes['costspan.usage.output_audio_tokens']), NULL) AS output_audio_tokens,
    if(has_usage, toUInt64OrZero(SpanAttributes['costspan.usage.input_image_tokens']), NULL) AS input_image_tokens,
    if(has_usage, toUInt64OrZero(SpanAttributes['costspan.usage.output_image_tokens']), NULL) AS output_image_tokens,
    Duration / 1e6 AS latency_ms,
    toDecimal128OrNull(SpanAttributes['gen_ai.usage.cost.amount'], 18) AS cost_usd,
    toDecimal128OrNull(SpanAttributes['costspan.cost.input'], 18) AS cost_input_usd,
    toDecimal128OrNull(SpanAttributes['costspan.cost.cache_read'], 18) AS cost_cache_read_usd,
    toDecimal128OrNull(SpanAttributes['costspan.cost.cache_write'], 18) AS cost_cache_write_usd,
    toDecimal128OrNull(SpanAttributes['costspan.cost.output'], 18) AS cost_output_usd,
    SpanAttributes['costspan.pricing.status'] AS pricing_status,
    SpanAttributes['costspan.pricing.source'] AS pricing_source,
    SpanAttributes['costspan.pricing.version'] AS pricing_version,
    SpanAttributes['costspan.pricing.model'] AS pricing_model,
    SpanAttributes['error.type'] AS error_type,
    SpanAttributes['costspan.openai.request_id'] AS request_id,
    SpanAttributes['costspan.openai.prompt_cache_key'] AS prompt_cache_key,
    if(SpanAttributes['openai.response.service_tier'] != '', SpanAttributes['openai.response.service_tier'],
       SpanAttributes['openai.request.service_tier']) AS service_tier,
    SpanAttributes['costspan.openai.batch_id'] AS batch_id
FROM otel.otel_traces
WHERE mapContains(SpanAttributes, 'costspan.pricing.status');
