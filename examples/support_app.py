"""A tiny support backend whose OpenAI calls costspan prices and attributes, with no tracing code of its own.

Run it under auto-instrumentation, sending spans to `costspan serve` (or any OTLP collector)::

    costspan serve &                                   # OTLP/HTTP on 127.0.0.1:4318, into the local store
    python -m costspan.providers.openai.fake --port 8899 &        # or use the real API: leave OPENAI_BASE_URL unset
    OPENAI_BASE_URL=http://127.0.0.1:8899/v1 OPENAI_API_KEY=sk-local \\
    OTEL_SERVICE_NAME=support-app OTEL_RESOURCE_ATTRIBUTES=deployment.environment.name=prod \\
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \\
        opentelemetry-instrument python examples/support_app.py
    costspan report --by feature,customer_id

Or skip the receiver and write straight into the store: ``opentelemetry-instrument --traces_exporter costspan``.

What the app does is what costspan needs from any app: say who a call is for. Per request, the middleware puts
the authenticated customer and the route into OpenTelemetry Baggage; each handler names its feature with
``costspan.attribute``; background work names everything itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import openai
from opentelemetry import baggage, context

import costspan

client = openai.OpenAI(max_retries=1)  # OPENAI_API_KEY and OPENAI_BASE_URL from the environment

SYSTEM_PROMPT = "You are Northwind Cloud's support assistant. Answer in two sentences and cite the help article. " * 50


@contextmanager
def request_context(customer_id: str, route: str) -> Iterator[None]:
    """What your web framework's middleware does after authentication (a FastAPI dependency, a Flask
    before_request, a Django middleware). Take the customer from the verified session or API key, never from a
    header the client controls."""
    ctx = baggage.set_baggage("customer_id", customer_id)
    ctx = baggage.set_baggage("route", route, ctx)
    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)


@costspan.attribute(feature="support-chat")
def answer(question: str) -> str:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
        stream=True,
        max_completion_tokens=80,
        prompt_cache_key="support-assistant",  # the same long prefix on every call: cached after the first
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


@costspan.attribute(feature="search-embeddings")
def search(query: str) -> list[float]:
    return client.embeddings.create(model="text-embedding-3-small", input=[query]).data[0].embedding


def nightly_digest(tickets: list[str]) -> None:
    # A cron job has no request, so it says who the calls are for itself.
    with costspan.attribute(feature="nightly-batch", route="cron:nightly-digest", customer_id="system"):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Summarize these tickets:\n" + "\n".join(tickets)}],
            max_completion_tokens=120,
        )


def main() -> None:
    traffic = [
        ("acme", "How do I rotate my API key without downtime?"),
        ("globex", "Why was I charged twice this month?"),
        ("acme", "Can I move my workspace to the EU region?"),
    ]
    for customer_id, question in traffic:
        with request_context(customer_id, "POST /api/chat"):
            answer(question)
        with request_context(customer_id, "GET /api/search"):
            search(question)
    nightly_digest([question for _, question in traffic])
    print(f"handled {len(traffic)} chats, {len(traffic)} searches and one nightly digest")


if __name__ == "__main__":
    main()
