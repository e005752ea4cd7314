-- Budgets are small: one replicated copy on every node (a single Keeper path shared by all shards), read locally.
CREATE TABLE IF NOT EXISTS otel.customer_budgets ON CLUSTER '{cluster}'
(
    customer_id String,
    monthly_budget_usd Decimal(38, 6),
    updated_at DateTime DEFAULT now()
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/otel/customer_budgets', '{shard}-{replica}', updated_at)
ORDER BY customer_id;
