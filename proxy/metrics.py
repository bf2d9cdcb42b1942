"""Prometheus metrics at GET /metrics: volume, latency and errors by service; streams; bytes.

Label values come only from the registry, HTTP status numbers and the error table, so their
number stays bounded: no key, token, model name or other client input ever becomes a label.
Under gunicorn the values live in files under PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py sets it
up), so one scrape adds up every worker; under `flask run` they live in the process.
"""
from __future__ import annotations

import functools
import hmac
import os

from flask import Flask, Response, request
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest, multiprocess)

from config import Settings
from proxy.errors import UnauthorizedError
from proxy.logs import RequestLog

EXTERNAL_PATH = "/api/proxy/external"
UPSTREAM_CODES = ("EXTERNAL_SERVICE_ERROR", "NETWORK_ERROR", "UPSTREAM_TIMEOUT")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter("byok_proxy_requests_total",
                   "Requests to the proxy route, by service and the status the client got.",
                   ["service", "status"])
DURATION = Histogram("byok_proxy_request_duration_seconds",
                     "Time from request to last byte sent, by service.", ["service"],
                     buckets=_BUCKETS)
UPSTREAM_DURATION = Histogram("byok_proxy_upstream_duration_seconds",
                              "Time until the provider's answer headers, by service.",
                              ["service"], buckets=_BUCKETS)
UPSTREAM_ERRORS = Counter("byok_proxy_upstream_errors_total",
                          "Failed provider calls, by service and error code.", ["service", "code"])
IN_FLIGHT = Gauge("byok_proxy_requests_in_flight", "Proxy requests being answered.",
                  multiprocess_mode="livesum")
STREAMS_OPEN = Gauge("byok_proxy_streams_open", "Event streams being relayed.",
                     multiprocess_mode="livesum")
RELAYED_BYTES = Counter("byok_proxy_relayed_bytes_total",
                        "Bytes of provider answers relayed to clients, by service.", ["service"])


# labels() takes a lock and checks its arguments on every call: each child is found once (label
# values are bounded, see above, so this cache is too).
_child = functools.cache(lambda metric, *values: metric.labels(*values))


def request_started(log: RequestLog) -> None:
    if log.path == EXTERNAL_PATH:
        IN_FLIGHT.inc()


def request_ended(log: RequestLog) -> None:
    """Record a finished request from its log line's facts (after a stream's last byte)."""
    if log.path != EXTERNAL_PATH:
        return
    IN_FLIGHT.dec()
    service = log.target_service or "none"
    _child(REQUESTS, service, str(log.status)).inc()
    _child(DURATION, service).observe(log.elapsed())
    if log.upstream_ms is not None:
        _child(UPSTREAM_DURATION, service).observe(log.upstream_ms / 1000)
    if log.error_code in UPSTREAM_CODES:
        _child(UPSTREAM_ERRORS, service, log.error_code).inc()
    if log.bytes_relayed:
        _child(RELAYED_BYTES, service).inc(log.bytes_relayed)


def register_metrics(app: Flask, settings: Settings) -> None:
    """GET /metrics, outside the proxy blueprint; Bearer METRICS_TOKEN when one is set."""
    expected = f"Bearer {settings.metrics_token}".encode() if settings.metrics_token else None

    def metrics() -> Response:
        if expected is not None and not hmac.compare_digest(
                request.headers.get("Authorization", "").encode(), expected):
            raise UnauthorizedError("A valid Bearer token is required for /metrics.")
        registry = REGISTRY
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # under gunicorn: add up every worker
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
