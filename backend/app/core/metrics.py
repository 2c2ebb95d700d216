"""Every metric the processes export, in one place, with conventional names and labels.

Counters and histograms move where the work happens (HTTP middleware, task middleware, the
embedding service, the search routes); the gauges about the data (rows per entity, the oldest
pending row, the JetStream consumer) are set by `app.observability.scrape` when /metrics is
read. All live in the default registry, beside prometheus-client's process collectors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

NAMESPACE = "tasktracker"
# Seconds: from a cached query vector (~1 ms) to a slow provider call (~10 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# -- the data, per entity (set at scrape time) ------------------------------------------
ROWS = Gauge(f"{NAMESPACE}_rows", "Rows per entity.", ["entity"])
ROWS_EMBEDDED = Gauge(
    f"{NAMESPACE}_rows_embedded", "Rows with an embedding (current or not).", ["entity"]
)
ROWS_EMBEDDED_BY_MODEL = Gauge(
    f"{NAMESPACE}_rows_embedded_by_model",
    "Rows with an embedding, per embedding model (more than one during a model switch).",
    ["entity", "model"],
)
ROWS_PENDING = Gauge(
    f"{NAMESPACE}_rows_pending", "Rows waiting for a (current) embedding.", ["entity"]
)
ROWS_STALE = Gauge(
    f"{NAMESPACE}_rows_stale",
    "Rows whose embedding is for older text or another model.",
    ["entity"],
)
ROWS_PARKED = Gauge(
    f"{NAMESPACE}_rows_parked",
    "Rows that failed EMBEDDING_MAX_ATTEMPTS times and wait for a retry by an operator.",
    ["entity"],
)
OLDEST_PENDING_AGE = Gauge(
    f"{NAMESPACE}_oldest_pending_age_seconds",
    "Age of the oldest row waiting for an embedding (0 when none waits).",
    ["entity"],
)

# -- the queue (set at scrape time) -----------------------------------------------------
_QUEUE_LABELS = ["stream", "consumer"]
JETSTREAM_PENDING = Gauge(
    f"{NAMESPACE}_jetstream_pending_messages",
    "Messages in the stream not yet delivered to the consumer.",
    _QUEUE_LABELS,
)
JETSTREAM_ACK_PENDING = Gauge(
    f"{NAMESPACE}_jetstream_ack_pending_messages",
    "Messages delivered to a worker and not acknowledged yet.",
    _QUEUE_LABELS,
)
JETSTREAM_REDELIVERED = Gauge(
    f"{NAMESPACE}_jetstream_redelivered_messages",
    "Messages delivered more than once and not acknowledged yet.",
    _QUEUE_LABELS,
)
JETSTREAM_WAITING_PULLS = Gauge(
    f"{NAMESPACE}_jetstream_waiting_pulls",
    "Pull requests waiting on the consumer: idle workers' fetches.",
    _QUEUE_LABELS,
)
JETSTREAM_UP = Gauge(
    f"{NAMESPACE}_jetstream_up", "1 when the consumer's state could be read.", _QUEUE_LABELS
)
WORKERS_SEEN = Gauge(
    f"{NAMESPACE}_workers_seen",
    "Workers whose heartbeat (every 10 s, kept 30 s) is in the stream's workers bucket.",
    ["stream"],
)
SCRAPE_ERRORS = Counter(
    f"{NAMESPACE}_scrape_errors",
    "Failures reading a source of the scrape-time gauges.",
    ["source"],
)

# -- work done (counted where it happens) -----------------------------------------------
TASKS = Counter(f"{NAMESPACE}_tasks", "Task runs by task name and outcome.", ["task", "outcome"])
TASK_SECONDS = Histogram(
    f"{NAMESPACE}_task_duration_seconds",
    "Task run time by task name and outcome.",
    ["task", "outcome"],
    buckets=TASK_BUCKETS,
)
SWEEPER_QUEUED = Counter(
    f"{NAMESPACE}_sweeper_queued_rows", "Rows the sweeper queued again.", ["entity"]
)
PROVIDER_REQUESTS = Counter(
    f"{NAMESPACE}_provider_requests",
    "Embedding provider requests by provider, kind (document or query) and outcome.",
    ["provider", "kind", "outcome"],
)
PROVIDER_ERRORS = Counter(
    f"{NAMESPACE}_provider_errors",
    "Failed embedding provider requests by provider and HTTP status ('none': no answer).",
    ["provider", "status"],
)
PROVIDER_SECONDS = Histogram(
    f"{NAMESPACE}_provider_request_duration_seconds",
    "Embedding provider request latency by provider.",
    ["provider"],
    buckets=LATENCY_BUCKETS,
)
PROVIDER_INPUTS = Counter(
    f"{NAMESPACE}_provider_inputs", "Texts sent to the embedding provider.", ["provider"]
)
SEARCH_SECONDS = Histogram(
    f"{NAMESPACE}_search_duration_seconds",
    "Search latency (query embedding included) by entity and mode (vector, hybrid, similar).",
    ["entity", "mode"],
    buckets=LATENCY_BUCKETS,
)
HTTP_REQUESTS = Counter(
    f"{NAMESPACE}_http_requests",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    f"{NAMESPACE}_http_request_duration_seconds",
    "HTTP request latency by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)


@contextmanager
def observe_search(entity: str, mode: str) -> Iterator[None]:
    """Time a search, whatever its outcome, into SEARCH_SECONDS."""
    started = time.perf_counter()
    try:
        yield
    finally:
        SEARCH_SECONDS.labels(entity, mode).observe(time.perf_counter() - started)


def observe_provider_call(
    provider: str, kind: str, inputs: int, seconds: float, status: int | None, ok: bool
) -> None:
    """One embedding provider request: its outcome, latency and size."""
    PROVIDER_REQUESTS.labels(provider, kind, "ok" if ok else "error").inc()
    PROVIDER_SECONDS.labels(provider).observe(seconds)
    PROVIDER_INPUTS.labels(provider).inc(inputs)
    if not ok:
        PROVIDER_ERRORS.labels(provider, str(status) if status is not None else "none").inc()
