-- The 20 most expensive routes of each day (UTC) in [start, end).
SELECT
    toDate(timestamp, 'UTC') AS day,
    route,
    count() AS calls,
    coalesce(sum(cost_usd), 0) AS spend_usd,
    countIf(cost_usd IS NULL) AS unpriced_calls
FROM otel.llm_cost_events FINAL
WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
GROUP BY day, route
ORDER BY day, spend_usd DESC, route
LIMIT 20 BY day;
