"""The worker's own metrics: prometheus-client's HTTP server on WORKER_METRICS_HOST:PORT."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import start_http_server

from app.core.config import Settings

logger = logging.getLogger(__name__)


def start_worker_metrics(settings: Settings) -> Any | None:
    """Serve /metrics from this process when WORKER_METRICS_PORT is set; returns the server.

    A port already taken (a second worker on the same machine) is logged and the worker runs
    on without its own metrics, rather than refusing to work.
    """
    if not settings.worker_metrics_port:
        return None
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        logger.warning("worker metrics not served on %s:%d (%s)", host, port, exc.strerror)
        return None
    logger.info("worker metrics on http://%s:%d/metrics", host, port)
    return server
