-- Prompt size (input tokens) by feature in [start, end): median, p95 and max. quantileExact returns a real
-- observed value: with n calls sorted ascending, the one at 0-based index floor(0.95 * n).
SELECT
    feature,
    count() AS calls,
    quantileExact(0.5)(input_tokens) AS p50_input_tokens,
    quantileExact(0.95)(input_tokens) AS p95_input_tokens,
    max(input_tokens) AS max_input_tokens
FROM otel.llm_cost_events FINAL
WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
  AND input_tokens IS NOT NULL
GROUP BY feature
ORDER BY p95_input_tokens DESC, feature;
