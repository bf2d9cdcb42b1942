"""Prometheus metrics at GET /metrics: volume, latency and errors by service; streams; bytes.

Label values come only from the registry, HTTP status numbers, the error table and a bounded
set of model names (see model_label), so their number stays bounded: no key, token or other
client input ever becomes a label.
Under gunicorn the values live in files under PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py sets it
up), so one scrape adds up every worker; under `flask run` they live in the process.
"""
from __future__ import annotations

import functools
import hmac
import os
import re

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
                   "Requests to the proxy route, by service, model and the status the client got.",
                   ["service", "model", "status"])
DURATION = Histogram("byok_proxy_request_duration_seconds",
                     "Time from request to last byte sent, by service and model.",
                     ["service", "model"], buckets=_BUCKETS)
TOKENS = Counter("byok_proxy_tokens_total",
                 "Tokens the providers reported, by service, model and type "
                 "(input, output, cached_input, reasoning).", ["service", "model", "type"])
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


# The usage fields of a request's log line, as the tokens counter's types.
_TOKEN_TYPES = (("inputTokens", "input"), ("outputTokens", "output"),
                ("cachedInputTokens", "cached_input"), ("reasoningTokens", "reasoning"))
# A plausible model id: what providers name models with ("gpt-4o-mini", "models/gemini-2.5-flash",
# "anthropic/claude-haiku-4.5", "ft:gpt-4o:org:x:id", "llama-3.3-70b@q4").
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
MAX_MODELS = 50
# The model names this process has given a label of their own: the first MAX_MODELS plausible
# ones it saw. Process state, as the metrics themselves are.
_models: set[str] = set()


def model_label(model: str | None) -> str:
    """The model label: the name when it is a plausible model id and one of the first 50 this
    process has seen, "other" for any other (so a client sending 10,000 names makes at most 51
    series per service), "none" when the payload named no model."""
    if model is None:
        return "none"
    if model in _models:
        return model
    if len(_models) < MAX_MODELS and _MODEL_ID.fullmatch(model):
        _models.add(model)
        return model
    return "other"


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
    service, model = log.target_service or "none", model_label(log.model)
    _child(REQUESTS, service, model, str(log.status)).inc()
    _child(DURATION, service, model).observe(log.elapsed())
    if log.usage is not None:
        for field, kind in _TOKEN_TYPES:
            if field in log.usage:
                _child(TOKENS, service, model, kind).inc(log.usage[field])
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
