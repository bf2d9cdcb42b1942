"""The ProxyError family, status classification, and the one place error handlers are registered."""
from __future__ import annotations

import logging
from typing import Mapping

from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException

from proxy import envelope

log = logging.getLogger("proxy.errors")


class ProxyError(Exception):
    """A failure the client sees as one error envelope (contract §3-4)."""

    code = "INTERNAL_ERROR"
    status = 500

    def __init__(self, message: str, *, service: str | None = None,
                 upstream_status: int | None = None, details: object = None,
                 headers: Mapping[str, str] | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.service = service
        self.upstream_status = upstream_status
        self.details = details
        self.headers = dict(headers or {})
        if status is not None:
            self.status = status

    def body(self, request_id: str) -> bytes:
        return envelope.error_body(self.code, self.message, request_id, service=self.service,
                                   upstream_status=self.upstream_status, details=self.details)


class ValidationError(ProxyError):
    code = "VALIDATION_ERROR"
    status = 400


class MissingApiKeyError(ProxyError):
    code = "MISSING_API_KEY"
    status = 400


class ExternalServiceError(ProxyError):
    code = "EXTERNAL_SERVICE_ERROR"
    status = 502


class NetworkError(ProxyError):
    code = "NETWORK_ERROR"
    status = 502


class UpstreamTimeoutError(ProxyError):
    code = "UPSTREAM_TIMEOUT"
    status = 504


class UnauthorizedError(ProxyError):
    code = "UNAUTHORIZED"
    status = 401


class RateLimitedError(ProxyError):
    code = "RATE_LIMITED"
    status = 429


class PayloadTooLargeError(ProxyError):
    code = "PAYLOAD_TOO_LARGE"
    status = 413


def client_status(upstream_status: int) -> int:
    """Status the client gets for a non-2xx provider answer (contract §4).

    A provider's 4xx means the client's payload or key is at fault, so it passes through;
    anything else (5xx, 529, 101, 3xx) is the provider's failure: 502.
    """
    return upstream_status if 400 <= upstream_status < 500 else 502


_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}


def _note_code(code: str) -> None:
    """Put the error code on the request's log line (and so into the metrics)."""
    log = g.get("request_log")
    if log is not None:
        log.error_code = code


def error_response(e: ProxyError) -> Response:
    """The envelope answer for a ProxyError, its code noted on the request's log line."""
    _note_code(e.code)
    return envelope.response(e.body(envelope.request_id()), e.status, e.headers)


def register_error_handlers(app: Flask) -> None:
    """Register every error handler, on the app so routing 404/405 are caught too."""
    app.register_error_handler(ProxyError, error_response)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        status = e.code or 500
        if status >= 500:
            return _internal_error(e)
        code = _HTTP_CODES.get(status, "VALIDATION_ERROR")
        _note_code(code)
        rid = envelope.request_id()
        response = e.get_response()  # keeps werkzeug's headers, such as Allow on a 405
        response.set_data(envelope.error_body(code, e.name, rid))
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def _internal_error(e: Exception):
        rid = envelope.request_id()
        _note_code("INTERNAL_ERROR")
        log.error("unhandled exception", exc_info=e, extra={"fields": {"requestId": rid}})
        body = envelope.error_body("INTERNAL_ERROR", "Internal error; quote the request id.", rid)
        return envelope.response(body, 500)
