-- Monthly budget per customer, read by queries/budget_burn_by_customer.sql. Load it from wherever budgets live
-- (INSERT, or a dictionary over your billing database). The latest row per customer wins.
CREATE TABLE IF NOT EXISTS otel.customer_budgets
(
    customer_id String,
    monthly_budget_usd Decimal(38, 6),
    updated_at DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY customer_id;
