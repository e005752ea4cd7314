-- Prompt size (input tokens) by feature in [start, end): median, p95 and max, as nearest-rank percentiles (the
-- same definition as `costspan report`): with n calls sorted by size, the p-th percentile is the ceil(p * n)-th.
WITH arraySort(groupArray(input_tokens)) AS sizes
SELECT
    feature,
    count() AS calls,
    sizes[toUInt64(greatest(ceil(0.5 * calls), 1))] AS p50_input_tokens,
    sizes[toUInt64(greatest(ceil(0.95 * calls), 1))] AS p95_input_tokens,
    max(input_tokens) AS max_input_tokens
FROM otel.llm_cost_events FINAL
WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
  AND input_tokens IS NOT NULL
GROUP BY feature
ORDER BY p95_input_tokens DESC, feature;
