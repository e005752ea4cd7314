-- Spend by feature and day (UTC) in [start, end).
-- clickhouse-client --param_start='2026-11-01 00:00:00' --param_end='2026-12-01 00:00:00' < spend_by_feature_day.sql
SELECT
    toDate(timestamp, 'UTC') AS day,
    feature,
    count() AS calls,
    coalesce(sum(cost_usd), 0) AS spend_usd,
    countIf(cost_usd IS NULL) AS unpriced_calls
FROM otel.llm_cost_events FINAL
WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
GROUP BY day, feature
ORDER BY day, spend_usd DESC, feature;
