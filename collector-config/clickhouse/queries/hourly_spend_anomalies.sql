-- Spend anomalies: features whose spend in the last full hour before as_of is more than 3x their average hourly
-- spend over the 168 hours (7 days) before that hour. Hours without calls count as $0 in the average, so a
-- feature that is usually idle has a low baseline; a feature with no spend at all in the baseline is flagged as
-- soon as it spends anything (baseline 0).
-- clickhouse-client --param_as_of="$(date -u '+%F %T')" < hourly_spend_anomalies.sql
WITH
    toStartOfHour({as_of:DateTime64(3, 'UTC')}) AS hour_end,
    hour_end - INTERVAL 1 HOUR AS hour_start,
    hour_start - INTERVAL 168 HOUR AS baseline_start
SELECT
    feature,
    hour_start,
    coalesce(sumIf(cost_usd, timestamp >= hour_start), 0) AS last_hour_usd,
    coalesce(sumIf(cost_usd, timestamp < hour_start), 0) / 168 AS baseline_hourly_usd,
    if(baseline_hourly_usd = 0, NULL, round(toFloat64(last_hour_usd / baseline_hourly_usd), 2)) AS ratio
FROM otel.llm_cost_events FINAL
WHERE timestamp >= baseline_start AND timestamp < hour_end
  AND cost_usd IS NOT NULL
GROUP BY feature
HAVING last_hour_usd > 3 * baseline_hourly_usd
ORDER BY last_hour_usd - baseline_hourly_usd DESC, feature;
