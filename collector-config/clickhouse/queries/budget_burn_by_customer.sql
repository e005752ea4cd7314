-- Budget burn by customer for the calendar month (UTC) containing as_of: month-to-date spend against the monthly
-- budget in otel.customer_budgets, and the month-end spend if the customer keeps the pace so far.
-- Customers without a budget row are listed with budget 0 so unbudgeted spend is visible.
WITH
    {as_of:DateTime64(3, 'UTC')} AS now_,
    toStartOfMonth(now_, 'UTC') AS month_start,
    toDateTime64(addMonths(month_start, 1), 3, 'UTC') AS month_end,
    dateDiff('second', toDateTime64(month_start, 3, 'UTC'), now_) / dateDiff('second', toDateTime64(month_start, 3, 'UTC'), month_end) AS elapsed
SELECT
    spend.customer_id AS customer_id,
    spend.mtd_usd AS mtd_usd,
    coalesce(budgets.budget_usd, 0) AS budget_usd,
    if(budget_usd = 0, NULL, round(toFloat64(mtd_usd / budget_usd), 4)) AS budget_used,
    round(toFloat64(mtd_usd) / elapsed, 6) AS projected_month_usd,
    if(budget_usd = 0, NULL, round(toFloat64(mtd_usd) / elapsed / toFloat64(budget_usd), 4)) AS burn_rate
FROM
(
    SELECT customer_id, coalesce(sum(cost_usd), 0) AS mtd_usd
    FROM otel.llm_cost_events FINAL
    WHERE timestamp >= month_start AND timestamp < now_
    GROUP BY customer_id
) AS spend
LEFT JOIN
(
    SELECT customer_id, argMax(monthly_budget_usd, updated_at) AS budget_usd
    FROM otel.customer_budgets
    GROUP BY customer_id
) AS budgets USING (customer_id)
ORDER BY burn_rate DESC NULLS LAST, mtd_usd DESC, customer_id;
