"""Forwarding to providers: what each call sends and where, what comes back, what is masked.

The machinery under it (connections, adapter, header parsing) is proxy/transport.py.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import msgspec
import requests
from urllib3 import Timeout
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from config import PROVIDERS, SERVICES, USER_AGENT, Provider, Service, Settings
from proxy import usage
from proxy.envelope import RawJSON, details_from, passed_headers
from proxy.errors import (ExternalServiceError, NetworkError, ProxyError, UpstreamTimeoutError,
                          ValidationError, client_status)
from proxy.logs import SHORTEST_SECRET, RequestLog
from proxy.transport import provider_session
from proxy.translations import RETRY_AFTER_FROM_BODY, TRANSLATIONS

_READ_SIZE = 64 * 1024


@dataclass
class Reply:
    """A provider's 2xx answer: a checked JSON body, or the chunks of an event stream."""

    headers: dict[str, str]
    body: RawJSON | None = None
    chunks: Iterator[bytes] | None = None


def _transport_error(exc: BaseException, service: str) -> ProxyError:
    """Classify a failure below HTTP (contract §4).

    Timeouts are tested first: requests' ConnectTimeout is a ConnectionError as well as a
    Timeout. A stall while reading a body (read from the raw response) surfaces as urllib3's
    ReadTimeoutError, and one while sending the request as a ConnectionError caused by the
    socket's TimeoutError.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (requests.Timeout, ReadTimeoutError, TimeoutError)):
            return UpstreamTimeoutError(f"{service} did not answer in time", service=service)
        cause = cause.__cause__ or cause.__context__
    return NetworkError(f"the connection to {service} failed", service=service)


# Provider payloads and translated answers as compact UTF-8 JSON (a tenth of json's time;
# integers of any size).
_dumps = msgspec.json.Encoder().encode
_json_object = msgspec.json.Decoder(usage.TopLevel)
_json_value = msgspec.json.Decoder(msgspec.Raw)
_NO_FIELDS = usage.TopLevel()


def _scan(body: bytes) -> usage.TopLevel | None:
    """A provider's body checked to be one JSON value in UTF-8 (RFC 8259: no NaN, no BOM,
    nothing after it), with the top-level fields that can hold usage; None if it is not.

    msgspec scans it: no Python object is built but those fields' bytes, so a 1 MB embeddings
    answer costs a scan (half of a parse) and no memory churn."""
    try:
        fields = _json_object.decode(body)
    except msgspec.ValidationError:  # valid JSON, but no object: scanned again, as a value
        fields = _NO_FIELDS if _is_json_value(body) else None
    except (msgspec.DecodeError, RecursionError):  # nested past ~1000 levels: refused too
        return None
    if fields is None or body.isascii():
        return fields
    try:
        body.decode()  # the scan leaves the bytes inside strings to us
    except UnicodeDecodeError:
        return None
    return fields


def _is_json_value(body: bytes) -> bool:
    try:
        _json_value.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


def _maskable(api_key: str) -> bytes:
    """The key as an echo of it would read; empty for a key too short to be a real one (as in
    the logs): masking every ":" or "ok" in an answer would break its JSON, and a local gateway
    may well take such a key."""
    return api_key.encode() if len(api_key) >= SHORTEST_SECRET else b""


def _scrub(body: bytes, key: bytes) -> bytes:
    """Mask the key should a provider ever echo it back: it must reach no client."""
    return body.replace(key, b"[REDACTED]") if key and key in body else body


def _scrub_headers(headers: dict[str, str], key: bytes) -> dict[str, str]:
    """The provider headers passed on, with the key masked in their values, as in a body."""
    if key:
        text = key.decode()
        for name, value in headers.items():
            if text in value:
                headers[name] = value.replace(text, "[REDACTED]")
    return headers


def _scrub_split(data: bytes, key: bytes) -> tuple[bytes, bytes]:
    """A stream's bytes with the key masked, as (what can be sent now, what waits for the
    next chunk): the last bytes wait only if the key could start there, split across chunks.

    Nothing else is held back: a key is printable ASCII, so an event's closing blank line is
    never the start of one."""
    data = _scrub(data, key)
    if key:
        # The first place in the last len(key) - 1 bytes from which the rest begins the key.
        start = data.find(key[:1], max(0, len(data) - len(key) + 1))
        while start != -1:
            if key.startswith(data[start:]):
                return data[:start], data[start:]
            start = data.find(key[:1], start + 1)
    return data, b""


# A Gemini model as a path segment (providers.md), matched as a whole string: a base model,
# with or without its "models/" prefix, or a tuned one.
_MODEL = re.compile(r"(?:models/)?[a-z0-9](?:[a-z0-9.-]{0,126}[a-z0-9])?"
                    r"|tunedModels/[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?")
_MODEL_MESSAGE = ("Must be a model id such as gemini-2.5-flash, models/<id> or "
                  "tunedModels/<id>: lower-case letters, digits, '.' and '-'.")


def _model_name(model: Any, service: str) -> str:
    """The model's resource name for a path ("models/<id>", "tunedModels/<id>"): the only
    place a client value meets a URL, so anything but a whole-string match is refused."""
    if not isinstance(model, str) or not _MODEL.fullmatch(model) or ".." in model:
        raise ValidationError("Invalid model.", service=service,
                              details={"payload": {"model": [_MODEL_MESSAGE]}})
    return model if "/" in model else "models/" + model


@dataclass(frozen=True, slots=True)
class Call:
    """One provider call, settled before the key is looked at: where it goes, what it sends."""

    service: Service
    url: str
    payload: dict[str, Any]  # the client's
    sent: dict[str, Any]  # what the provider gets
    stream: bool


class Upstream:
    """The per-app pool: one Session per provider, URLs and headers built once at start."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # A urllib3 Timeout, which requests passes on as it is (a tuple it would convert per call).
        self._timeout = Timeout(connect=settings.upstream_connect_timeout,
                                read=settings.upstream_read_timeout)
        self._sessions = {name: provider_session(settings) for name in PROVIDERS}
        # Per service: its base URL, and its plain and streamed URLs where no model fills them.
        self._bases = {s.name: settings.base_urls[s.provider] for s in SERVICES.values()}
        self._urls = {s.name: (self._bases[s.name] + s.path,
                               self._bases[s.name] + (s.stream_path or s.path))
                      for s in SERVICES.values()}
        self._adapters = {s.name: self._sessions[s.provider].get_adapter(self._urls[s.name][0])
                          for s in SERVICES.values()}
        self._headers = {p.name: {**p.default_headers,
                                  "Content-Type": "application/json",
                                  "Accept-Encoding": "identity",  # relayed as it comes
                                  "User-Agent": USER_AGENT}
                         for p in PROVIDERS.values()}
        self._request_ids = {p.name: tuple(h.lower() for h in p.request_id_headers)
                             for p in PROVIDERS.values()}

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()

    def prepare(self, service: Service, payload: dict[str, Any]) -> Call:
        """The call for a client's payload: its URL and body. A payload the service cannot
        send (a bad model, a cohere_generate field chat cannot honour) is a ValidationError
        here, before any byte leaves."""
        wants_stream = service.streams and payload.get("stream") is True
        sent = payload
        if service.translation:
            to_upstream = TRANSLATIONS[service.translation][0]
            sent = to_upstream(payload, self.settings.cohere_generate_model)
        if not service.model_in_path:  # its (plain, streamed) URLs were built at start
            return Call(service, self._urls[service.name][wants_stream], payload, sent,
                        wants_stream)
        model = _model_name(payload.get("model"), service.name)
        path = service.stream_path if wants_stream and service.stream_path else service.path
        url = self._bases[service.name] + path.replace("{model}", model)
        # The model is in the path, and a stream_path's `stream` only chose it: neither is sent.
        left_out = ("model", "stream") if service.stream_path else ("model",)
        sent = {name: value for name, value in payload.items() if name not in left_out}
        return Call(service, url, payload, sent, wants_stream)

    def forward(self, call: Call, api_key: str, options: Mapping[str, str],
                log: RequestLog) -> Reply:
        """Send the call; raise ProxyError for every answer but a usable 2xx."""
        service, provider = call.service, PROVIDERS[call.service.provider]
        started = time.perf_counter()
        response = self._send(call, provider, api_key, options)
        log.upstream_ms = round((time.perf_counter() - started) * 1000, 1)
        status = log.upstream_status = response.status_code
        key = _maskable(api_key)
        headers = _scrub_headers(
            passed_headers(response.headers, self._request_ids[provider.name]), key)
        is_2xx = 200 <= status < 300
        if is_2xx and call.stream and _is_event_stream(response):
            log.stream = True
            return Reply(headers, chunks=self._relay(response, service, key, log))

        body = _scrub(self._read(response, service), key)
        fields = _scan(body)
        is_json = fields is not None
        if is_2xx and not is_json:
            raise ExternalServiceError(f"{service.name} answered {status} without JSON",
                                       service=service.name, upstream_status=status,
                                       details=details_from(body, None), headers=headers)
        if not is_2xx:
            if provider.retry_after_from_body and is_json and not _has_retry_after(headers):
                wait = RETRY_AFTER_FROM_BODY[provider.retry_after_from_body](body)
                if wait is not None:
                    headers["Retry-After"] = wait
            # 101 and 3xx land here too: a redirect is never followed, it would carry the key.
            raw = RawJSON(body) if is_json else None
            raise ExternalServiceError(f"{service.name} answered {status}", service=service.name,
                                       status=client_status(status), upstream_status=status,
                                       details=details_from(body, raw), headers=headers)
        log.usage = usage.from_answer(service.usage, fields)
        if service.translation:
            from_upstream = TRANSLATIONS[service.translation][1]
            body = _dumps(from_upstream(_parsed(body), call.payload))
        log.bytes_relayed = len(body)
        return Reply(headers, body=RawJSON(body))

    def _send(self, call: Call, provider: Provider, api_key: str,
              options: Mapping[str, str]) -> requests.Response:
        """POST through the provider's pooled adapter.

        The request is built here and handed to the Session's mounted adapter, skipping
        Session.request's per-call work (environment merging, cookies, hooks, redirect
        resolution) that this service needs none of. Redirects are never followed.
        """
        body = _dumps(call.sent)
        request = requests.PreparedRequest()
        request.method, request.url, request.body = "POST", call.url, body
        # A plain dict: each name is set once, and urllib3 reads it at C speed.
        request.headers = {
            **self._headers[provider.name],
            provider.auth_header: provider.auth_prefix + api_key,
            "Accept": "text/event-stream" if call.stream else "application/json",
            "Content-Length": str(len(body)),
            **options}
        try:
            return self._adapters[call.service.name].send(request, stream=True,
                                                          timeout=self._timeout)
        except requests.RequestException as exc:
            raise _transport_error(exc, call.service.name) from None

    @staticmethod
    def _read(response: requests.Response, service: Service) -> bytes:
        try:
            return response.raw.read(decode_content=True)
        except (Urllib3Error, OSError) as exc:
            raise _transport_error(exc, service.name) from None
        finally:
            response.close()  # a fully read connection is already back in the pool

    @staticmethod
    def _relay(response: requests.Response, service: Service, key: bytes,
               log: RequestLog) -> Iterator[bytes]:
        """Yield the provider's bytes as they arrive, never waiting to fill a buffer, with an
        echoed key (see _maskable) masked as in a plain answer.

        A chunked answer is relayed chunk by chunk; any other, with read1, whatever the socket
        holds. Closing this generator (the client went away) closes the provider connection.
        """
        raw = response.raw
        held = b""
        counts = usage.StreamUsage(service.usage)
        try:
            if raw.chunked:
                chunks = raw.read_chunked(decode_content=True)
            else:
                chunks = iter(lambda: raw.read1(_READ_SIZE, decode_content=True) or b"", b"")
            for chunk in chunks:
                log.relayed(len(chunk))
                counts.feed(chunk)
                chunk, held = _scrub_split(held + chunk, key)
                if chunk:
                    yield chunk
            if held:
                yield held
            log.ended = "completed"
        except GeneratorExit:
            log.ended = "client_gone"
            raise
        except (Urllib3Error, OSError) as exc:
            log.ended = "upstream_error"
            if held:  # the client gets all that came before the error event
                yield held
            raise _transport_error(exc, service.name) from None
        finally:
            log.usage = counts.result()
            response.close()


def _parsed(body: bytes) -> Any:
    """A checked body as Python values, for a translation; None for what only scans as JSON
    (a number past a double's range), which the translation reports as an unexpected shape."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None


def _has_retry_after(headers: Mapping[str, str]) -> bool:
    return any(name.lower() == "retry-after" for name in headers)


def _is_event_stream(response: requests.Response) -> bool:
    # A compatible gateway that ignores stream=true answers JSON: treat that as a plain answer.
    return response.headers.get("Content-Type", "").lower().startswith("text/event-stream")
