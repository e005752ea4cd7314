-- Sharded variant of ../04_llm_cost_calls.sql: a view over the Distributed table. A retry shares its trace id with
-- the first attempt, so both were sharded to the same node.
CREATE VIEW IF NOT EXISTS otel.llm_cost_calls ON CLUSTER '{cluster}' AS
SELECT
    *,
    parent_span_id != ''
        AND row_number() OVER (
            PARTITION BY trace_id, parent_span_id, request_model, operation, input_tokens
            ORDER BY timestamp, span_id
        ) > 1 AS is_retry
FROM otel.llm_cost_events FINAL;
