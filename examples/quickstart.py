"""The smallest costspan app: run it under `opentelemetry-instrument` and every OpenAI call becomes a span.

    OPENAI_BASE_URL=http://127.0.0.1:8899/v1 OPENAI_API_KEY=sk-local \\
    OTEL_SERVICE_NAME=quickstart OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \\
        opentelemetry-instrument python examples/quickstart.py

The app sets the attribution baggage the way request middleware would, then makes two calls.
"""

from __future__ import annotations

import openai
from opentelemetry import baggage, context


def handle_request(client: openai.OpenAI, customer_id: str, question: str) -> str:
    ctx = context.get_current()
    for key, value in {
        "feature": "support-chat",
        "route": "/api/v1/chat/answer",
        "customer_id": customer_id,
        "environment": "prod",
    }.items():
        ctx = baggage.set_baggage(key, value, ctx)
    token = context.attach(ctx)
    try:
        response = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": question}])
        return response.choices[0].message.content or ""
    finally:
        context.detach(token)


def main() -> None:
    client = openai.OpenAI()  # OPENAI_API_KEY and OPENAI_BASE_URL from the environment
    for customer_id, question in (("cust_4291", "Where is my invoice?"), ("cust_0007", "Cancel my plan")):
        print(customer_id, "->", handle_request(client, customer_id, question)[:40])


if __name__ == "__main__":
    main()
