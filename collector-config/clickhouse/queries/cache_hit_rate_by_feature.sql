-- Prompt-cache hit rate by feature in [start, end): the share of input tokens served from the provider's cache,
-- and the share of calls that hit the cache at all. Calls without usage (errors, refusals) are left out.
SELECT
    feature,
    count() AS calls,
    sum(input_tokens) AS total_input_tokens,
    sum(cached_tokens) AS total_cached_tokens,
    round(sum(cached_tokens) / sum(input_tokens), 6) AS token_hit_rate,
    round(countIf(cached_tokens > 0) / count(), 6) AS call_hit_rate,
    coalesce(sum(cost_cache_read_usd), 0) AS cache_read_cost_usd
FROM otel.llm_cost_events FINAL
WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
  AND input_tokens > 0
GROUP BY feature
ORDER BY total_input_tokens DESC, feature;
