"""The blueprint and its three views: parse the body, load the schema, forward, wrap."""
from __future__ import annotations

from datetime import datetime, timezone
from functools import partial
from typing import Iterator

import marshmallow as ma
from flask import Blueprint, Response, current_app, g, request
from gunicorn.http.errors import ParseException

from config import OPTION_HEADERS, PROVIDERS, SERVICES, VERSION, Service
from proxy import access, envelope, logs, metrics
from proxy.errors import MissingApiKeyError, PayloadTooLargeError, ProxyError, ValidationError
from proxy.logs import RequestLog
from proxy.schemas import OPTION_HEADER_MAX, ProxyRequestSchema, is_printable_ascii
from proxy.upstream import Upstream

bp = Blueprint("proxy", __name__, url_prefix="/api/proxy")
_schema = ProxyRequestSchema()
_READ_SIZE = 64 * 1024
# GET /services: what a client may call, from the registry (contract §3).
_SERVICES_DATA = {
    "services": sorted(SERVICES), "count": len(SERVICES),
    "catalog": [{"name": s.name, "provider": s.provider, "kind": s.kind, "streams": s.streams}
                for s in sorted(SERVICES.values(), key=lambda s: s.name)]}
# Where WSGI keeps each option header, looked up directly: four header look-ups through
# werkzeug's EnvironHeaders cost more than the rest of this check.
_OPTION_ENVIRON_KEYS = tuple((name, "HTTP_" + name.upper().replace("-", "_"))
                             for name in OPTION_HEADERS)


def _upstream() -> Upstream:
    return current_app.extensions["proxy"]


@bp.post("/external")
def forward_external() -> Response:
    rid, log = envelope.request_id(), g.request_log
    try:
        req = _schema.load(_json_object_body())
    except ma.ValidationError as e:
        raise ValidationError("Invalid request body.", details=e.messages) from None
    service, payload = SERVICES[req["target_service"]], req["payload"]
    upstream = _upstream()
    log.proxying(service.name, payload)
    call = upstream.prepare(service, payload)
    log.url = call.url.partition("?")[0]
    if log.model is None:  # a model the proxy chose (cohere_generate's default)
        log.model = logs.model_name(call.sent.get("model"))
    api_key = (req["api_key"] or "").strip()
    logs.hide(api_key)
    if not api_key:
        raise MissingApiKeyError("api_key is required.", service=service.name)
    reply = upstream.forward(call, api_key, _option_headers(service), log)
    if reply.chunks is not None:
        headers = {**reply.headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return Response(_event_stream(reply.chunks, rid, log), 200, headers,
                        content_type="text/event-stream")
    return envelope.response(envelope.success_body(reply.body, rid), 200, reply.headers)


@bp.get("/health")
def health() -> Response:
    data = {"status": "healthy",
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "services": len(SERVICES), "version": VERSION,
            "environment": _upstream().settings.environment}
    return envelope.response(envelope.success_body(data, envelope.request_id()))


@bp.get("/services")
def list_services() -> Response:
    return envelope.response(envelope.success_body(_SERVICES_DATA, envelope.request_id()))


bp.before_request(access.require_access_token)


@bp.before_app_request
def _start_request_log() -> None:
    logs.forget_secrets()
    g.request_log = log = RequestLog(envelope.request_id(), request.method, request.path)
    metrics.request_started(log)


@bp.after_app_request
def _finish_request(response: Response) -> Response:
    """Every answer carries the request id; its log line is written when the server closes
    the response, which for a stream is after the last byte."""
    response.headers["X-Request-ID"] = envelope.request_id()
    log = g.get("request_log")
    if log is not None:
        log.status = response.status_code
        response.call_on_close(partial(_request_ended, log))
    return response


def _request_ended(log: RequestLog) -> None:
    log.emit()
    metrics.request_ended(log)


def _json_object_body() -> dict:
    """The request body as a JSON object, read and checked by us.

    werkzeug's own limit silently cuts a chunked body short, and get_json() answers a wrong
    Content-Type with a 415, so both are checked here (the bytes by _read_body).
    """
    settings = _upstream().settings
    limit, length = settings.max_request_bytes, request.content_length
    if length is not None and length > limit:
        raise PayloadTooLargeError(f"Request body is over {limit} bytes.")
    # The media type as werkzeug's mimetype reads it, without parsing the parameters.
    if request.environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != (
            "application/json"):
        raise ValidationError("Content-Type must be application/json.")
    data = _read_body(limit, settings.client_body_timeout)
    try:
        body = envelope.loads_strict(data)
    except ValueError:
        raise ValidationError(
            "Body is not valid JSON (UTF-8, standard literals, no repeated keys).") from None
    if not isinstance(body, dict):
        raise ValidationError("Body must be a JSON object.")
    return body


def _read_body(limit: int, stall_seconds: float) -> bytes:
    """The body, counted against `limit` as it comes (chunked or not), and refused should it
    stop arriving for `stall_seconds`: gunicorn would wait for it for ever, and a few dozen
    stalled clients held every gthread thread (a few thousand, every gevent worker's
    connections). A body the client breaks off (a chunked one that ends or is reset before its
    last chunk, or whose framing gunicorn refuses) is the client's error too, not a 500. Either
    way the connection is closed after the answer, since a body that was not read to its end
    leaves the next request's start unknown. (No socket is known under `flask run`.)
    """
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        before = sock.gettimeout()
        sock.settimeout(stall_seconds)
    data, size = [], 0
    try:
        while chunk := request.stream.read(_READ_SIZE):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"Request body is over {limit} bytes.")
            data.append(chunk)
    except TimeoutError:
        _close_after_answer()
        raise ValidationError("The request body stopped arriving: nothing came for "
                              f"{stall_seconds:g} s.") from None
    except (OSError, ParseException):  # gunicorn's NoMoreData is an OSError, as is a reset
        _close_after_answer()
        raise ValidationError("The request body broke off before its end, or its chunked "
                              "framing is malformed.") from None
    finally:
        if sock is not None:
            sock.settimeout(before)
    return b"".join(data)


def _close_after_answer() -> None:
    """Have gunicorn answer with Connection: close and close the connection. It closes one
    whose body failed to read in any case; this also makes the answer say so. Its chunked
    reader is the one place that holds the request (gunicorn/http/body.py, ChunkedReader.req);
    a length-delimited body that breaks off has no connection left to keep."""
    request_message = getattr(getattr(request.environ.get("wsgi.input"), "reader", None),
                              "req", None)
    if request_message is not None:
        request_message.force_close()


def _option_headers(service: Service) -> dict[str, str]:
    """The provider option headers the client sent, for this service's provider only.

    Every option header is checked, whichever provider it is for: a bad value is refused
    even where it would not be forwarded, as openapi.yaml says.
    """
    mine = PROVIDERS[service.provider].option_headers
    options, environ = {}, request.environ
    for name, key in _OPTION_ENVIRON_KEYS:
        value = environ.get(key)
        if not value:
            continue
        if len(value) > OPTION_HEADER_MAX or not is_printable_ascii(value):
            raise ValidationError("Invalid option header.", details={"headers": {name: [
                f"Must be printable ASCII, at most {OPTION_HEADER_MAX} characters."]}})
        if name in mine:
            options[name] = value
    return options


def _event_stream(chunks: Iterator[bytes], rid: str, log: RequestLog) -> Iterator[bytes]:
    """Relay the provider's events; a break mid-stream ends with one `event: error` frame."""
    last = b"\n\n"
    metrics.STREAMS_OPEN.inc()
    try:
        for last in chunks:
            yield last
    except ProxyError as e:
        log.error_code = e.code
        # Start the frame on a fresh event, whatever the provider's last bytes were.
        gap = b"" if last.endswith((b"\n\n", b"\r\n\r\n")) else b"\n\n"
        yield gap + b"event: error\ndata: " + e.body(rid) + b"\n\n"
    finally:
        metrics.STREAMS_OPEN.dec()
        chunks.close()  # closes the provider connection when the client goes away
