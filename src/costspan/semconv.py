"""Attribute and metric names: the one place every other module (store, collector SQL, alerts) reads them from.

GenAI names follow the OpenTelemetry semantic conventions (v1.41). Names under ``costspan.`` are ours.
"""

from __future__ import annotations

from typing import Final

# --- GenAI semantic conventions -------------------------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"

GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"

# Proposed GenAI cost convention.
GEN_AI_USAGE_COST_AMOUNT: Final = "gen_ai.usage.cost.amount"
GEN_AI_USAGE_COST_CURRENCY: Final = "gen_ai.usage.cost.currency"
GEN_AI_USAGE_COST_SOURCE: Final = "gen_ai.usage.cost.source"
# Name read by Langfuse ingestion and OpenLIT dashboards; written only when the compat switch is on.
GEN_AI_USAGE_COST_COMPAT: Final = "gen_ai.usage.cost"

OPENAI_API_TYPE: Final = "openai.api.type"
OPENAI_REQUEST_SERVICE_TIER: Final = "openai.request.service_tier"
OPENAI_RESPONSE_SERVICE_TIER: Final = "openai.response.service_tier"
ANTHROPIC_REQUEST_SERVICE_TIER: Final = "anthropic.request.service_tier"  # the names the anthropic SDK's spans use
ANTHROPIC_RESPONSE_SERVICE_TIER: Final = "anthropic.response.service_tier"
# Where a span says its service tier, whichever provider made it: the response's first (what ran and bills), then
# the request's. The store keeps the first one present, so re-pricing sees the tier the span priced.
SERVICE_TIER_ATTRIBUTES: Final = (
    OPENAI_RESPONSE_SERVICE_TIER,
    ANTHROPIC_RESPONSE_SERVICE_TIER,
    OPENAI_REQUEST_SERVICE_TIER,
    ANTHROPIC_REQUEST_SERVICE_TIER,
)

SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"

# --- costspan ------------------------------------------------------------------------------------------
COSTSPAN_REQUEST_ID: Final = "costspan.openai.request_id"  # the provider's x-request-id
COSTSPAN_PROMPT_CACHE_KEY: Final = "costspan.openai.prompt_cache_key"
COSTSPAN_BATCH_ID: Final = "costspan.openai.batch_id"
COSTSPAN_USAGE_INPUT_AUDIO_TOKENS: Final = "costspan.usage.input_audio_tokens"
COSTSPAN_USAGE_OUTPUT_AUDIO_TOKENS: Final = "costspan.usage.output_audio_tokens"
COSTSPAN_USAGE_INPUT_IMAGE_TOKENS: Final = "costspan.usage.input_image_tokens"
COSTSPAN_USAGE_OUTPUT_IMAGE_TOKENS: Final = "costspan.usage.output_image_tokens"
COSTSPAN_USAGE_PREDICTION_ACCEPTED_TOKENS: Final = "costspan.usage.prediction_accepted_tokens"
COSTSPAN_USAGE_PREDICTION_REJECTED_TOKENS: Final = "costspan.usage.prediction_rejected_tokens"
COSTSPAN_USAGE_CACHE_WRITE_1H_TOKENS: Final = "costspan.usage.cache_write_1h_tokens"
COSTSPAN_USAGE_WEB_SEARCH_REQUESTS: Final = "costspan.usage.web_search_requests"

COSTSPAN_COST_INPUT: Final = "costspan.cost.input"
COSTSPAN_COST_CACHE_READ: Final = "costspan.cost.cache_read"
COSTSPAN_COST_CACHE_WRITE: Final = "costspan.cost.cache_write"
COSTSPAN_COST_OUTPUT: Final = "costspan.cost.output"
COSTSPAN_PRICING_STATUS: Final = "costspan.pricing.status"
COSTSPAN_PRICING_SOURCE: Final = "costspan.pricing.source"
COSTSPAN_PRICING_VERSION: Final = "costspan.pricing.version"
COSTSPAN_PRICING_MODEL: Final = "costspan.pricing.model"  # the price-data model id the response model resolved to
COSTSPAN_PRICING_NOTE: Final = "costspan.pricing.note"  # why a call is not priced, e.g. an unknown service tier
# Which model name priced the call: the response's, or the request's when the response's has no price.
COSTSPAN_PRICING_MODEL_SOURCE: Final = "costspan.pricing.model_source"
MODEL_SOURCE_RESPONSE: Final = "response"
MODEL_SOURCE_REQUEST: Final = "request"

COSTSPAN_ATTRIBUTION_MISSING: Final = "costspan.attribution.missing"
COSTSPAN_REFUSED: Final = "costspan.refused"  # why costspan refused the call before sending it

# Budgets and prompt-size guardrails: span events on the call's span, and their attributes.
EVENT_BUDGET_EXCEEDED: Final = "costspan.budget.exceeded"
EVENT_BUDGET_ALERT: Final = "costspan.budget.alert"
EVENT_BUDGET_LEDGER_ERROR: Final = "costspan.budget.ledger_error"
EVENT_PROMPT_LARGE: Final = "costspan.prompt.large"
COSTSPAN_BUDGET_NAME: Final = "costspan.budget.name"
COSTSPAN_BUDGET_WINDOW: Final = "costspan.budget.window"
COSTSPAN_BUDGET_LIMIT_USD: Final = "costspan.budget.limit_usd"
COSTSPAN_BUDGET_USED_USD: Final = "costspan.budget.used_usd"
COSTSPAN_BUDGET_RESERVED_USD: Final = "costspan.budget.reserved_usd"
COSTSPAN_BUDGET_THRESHOLD: Final = "costspan.budget.threshold"
COSTSPAN_BUDGET_OPERATION: Final = "costspan.budget.operation"  # reserve or settle, on ledger errors
COSTSPAN_PROMPT_ESTIMATED_TOKENS: Final = "costspan.prompt.estimated_tokens"
COSTSPAN_PROMPT_LIMIT: Final = "costspan.prompt.limit"

# Pricing statuses.
STATUS_PRICED: Final = "priced"
STATUS_UNKNOWN_MODEL: Final = "unknown_model"
STATUS_NO_USAGE: Final = "no_usage"
STATUS_INCOMPLETE: Final = "incomplete"
STATUS_UNKNOWN_TIER: Final = "unknown_tier"
STATUS_IMPLAUSIBLE_USAGE: Final = "implausible_usage"  # counts that cannot be right: flagged, never billed

# Default baggage keys copied onto spans.
DEFAULT_ATTRIBUTION_KEYS: Final = ("feature", "route", "customer_id", "environment")
DEPLOYMENT_ENVIRONMENT_NAME: Final = "deployment.environment.name"

# --- metrics ---------------------------------------------------------------------------------------------
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
METRIC_OPERATION_COST: Final = "gen_ai.client.operation.cost"
METRIC_BUDGET_LEDGER_ERRORS: Final = "costspan.budget.ledger.errors"  # calls whose budget check could not run
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
