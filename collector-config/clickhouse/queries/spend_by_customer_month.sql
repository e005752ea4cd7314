-- Spend by customer and calendar month (UTC) in [start, end).
SELECT
    toStartOfMonth(timestamp, 'UTC') AS month,
    customer_id,
    count() AS calls,
    coalesce(sum(cost_usd), 0) AS spend_usd,
    countIf(cost_usd IS NULL) AS unpriced_calls
FROM otel.llm_cost_events FINAL
WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
GROUP BY month, customer_id
ORDER BY month, spend_usd DESC, customer_id;
