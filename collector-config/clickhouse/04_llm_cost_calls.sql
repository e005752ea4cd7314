-- llm_cost_calls: llm_cost_events, deduplicated, with the embedded store's `is_retry` mark.
-- A call the application really made twice (its own retry inside one handler) is billed twice, so it counts twice;
-- the mark tells it apart: same trace, same parent span, same model, operation and prompt size, started later.
-- Read this view where a report wants to show retries; the queries in queries/ read the table directly.
CREATE VIEW IF NOT EXISTS otel.llm_cost_calls AS
SELECT
    *,
    parent_span_id != ''
        AND row_number() OVER (
            PARTITION BY trace_id, parent_span_id, request_model, operation, input_tokens
            ORDER BY timestamp, span_id
        ) > 1 AS is_retry
FROM otel.llm_cost_events FINAL;
