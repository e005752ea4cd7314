"""GenAI client metrics, plus the cost histogram that spend alerts are built on.

Recording a histogram point in the OpenTelemetry SDK costs ~12 µs (attribute cleaning and hashing), and a call
records four: more than the span itself. So, like ``BatchSpanProcessor`` does for spans, the request path only
queues the call's raw values (one tuple); their attribute sets are built, and the points recorded into the SDK
instruments, when a metric reader collects (through an observable instrument's callback, which the SDK runs
before it reads the synchronous instruments) or by a background thread once the queue grows, so memory stays
bounded between collections. That keeps the cost off the app's call, not out of the process: ``metrics=False``
(``OTEL_COSTSPAN_METRICS=false``) leaves the points out.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from costspan import semconv
from costspan.config import Settings

logger = logging.getLogger(__name__)

# Advisory bucket boundaries from the GenAI semantic conventions.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
COST_BUCKETS = (0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

_DRAIN_THRESHOLD = 2048

# What identifies a call on every metric: operation, provider, request model, response model, server address and
# port, error type (None where not known).
CallKey = tuple[str, str, "str | None", "str | None", "str | None", "int | None", "str | None"]
_Measurement = tuple[CallKey, Mapping[str, str], float, "int | None", "int | None", "float | None"]
_KEY_ATTRIBUTES = (
    semconv.GEN_AI_OPERATION_NAME,
    semconv.GEN_AI_PROVIDER_NAME,
    semconv.GEN_AI_REQUEST_MODEL,
    semconv.GEN_AI_RESPONSE_MODEL,
    semconv.SERVER_ADDRESS,
    semconv.SERVER_PORT,
    semconv.ERROR_TYPE,
)


class CallMetrics:
    def __init__(self, meter: Meter, *, attribution_keys: Sequence[str] = Settings().metric_attribution_keys) -> None:
        # The attribution keys on the cost metric: Settings.metric_attribution_keys, without the high-cardinality ones.
        self.attribution_keys = tuple(attribution_keys)
        # Per call key: the attributes of every point, and of the token points (which carry no error.type).
        self._key_attributes: dict[CallKey, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.tokens = meter.create_histogram(
            semconv.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS),
        )
        self.duration = meter.create_histogram(
            semconv.METRIC_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.cost = meter.create_histogram(
            semconv.METRIC_OPERATION_COST,
            unit="USD",
            description="Cost of the GenAI operation in US dollars, from dated prices.",
            explicit_bucket_boundaries_advisory=list(COST_BUCKETS),
        )
        self._queue: deque[_Measurement] = deque()
        self._drain_lock = threading.Lock()
        self._wake = threading.Event()
        _live.add(self)
        # Its callback drains the queues just before every collection; it reports their backlog. A meter that has
        # the gauge already (instrumented again on the same provider) keeps the first callback: so the callback
        # drains every live CallMetrics, not one bound instance.
        meter.create_observable_gauge(
            "costspan.metrics.backlog",
            callbacks=[_drain_all],
            unit="{measurement}",
            description="Measurements queued by costspan and not yet recorded (drained at each collection).",
        )
        self._drainer: threading.Thread | None = None

    def record(
        self,
        key: CallKey,
        attribution: Mapping[str, str],
        duration_s: float,
        input_tokens: int | None,
        output_tokens: int | None,
        cost_usd: float | None,
    ) -> None:
        """Queue one call's measurements (a deque append; safe from any thread). ``attribution`` is the call's
        whole attribution, not to be changed afterwards; only the metric keys of it are recorded."""
        queue = self._queue
        queue.append((key, attribution, duration_s, input_tokens, output_tokens, cost_usd))
        if len(queue) >= _DRAIN_THRESHOLD:
            if self._drainer is None:  # started only by a process that records faster than its reader collects
                self._drainer = threading.Thread(target=self._drain_when_woken, name="costspan-metrics", daemon=True)
                self._drainer.start()
            self._wake.set()

    def drain(self) -> None:
        with self._drain_lock:
            queue = self._queue
            while queue:
                try:
                    self._record_now(queue.popleft())
                except IndexError:
                    return
                except Exception:
                    logger.exception("costspan: failed to record a metric point")

    def _bases(self, key: CallKey) -> tuple[dict[str, Any], dict[str, Any]]:
        bases = self._key_attributes.get(key)
        if bases is None:
            if len(self._key_attributes) > 4096:  # bounded even if models or error types never repeat
                self._key_attributes.clear()
            base = {name: value for name, value in zip(_KEY_ATTRIBUTES, key, strict=True) if value}
            # The conventions list no error.type on token usage.
            bases = base, {name: value for name, value in base.items() if name != semconv.ERROR_TYPE}
            self._key_attributes[key] = bases
        return bases

    def _record_now(self, measurement: _Measurement) -> None:
        key, attribution, duration_s, input_tokens, output_tokens, cost_usd = measurement
        base, token_base = self._bases(key)
        self.duration.record(duration_s, base)
        if input_tokens is not None:
            self.tokens.record(input_tokens, {**token_base, semconv.GEN_AI_TOKEN_TYPE: "input"})
        if output_tokens is not None:
            self.tokens.record(output_tokens, {**token_base, semconv.GEN_AI_TOKEN_TYPE: "output"})
        if cost_usd is not None:
            labels = {name: attribution[name] for name in self.attribution_keys if name in attribution}
            self.cost.record(cost_usd, {**base, **labels})

    def _drain_when_woken(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self.drain()


_live: weakref.WeakSet[CallMetrics] = weakref.WeakSet()


def _drain_all(options: CallbackOptions) -> Iterable[Observation]:
    """The backlog gauge's callback: record what every live CallMetrics queued; report what is left."""
    backlog = 0
    for metrics in list(_live):
        metrics.drain()
        backlog += len(metrics._queue)
    return [Observation(backlog)]
