"""One kept-alive requests.Session per provider: sending, reading and relaying provider answers."""
from __future__ import annotations

import email.parser
import http.client
import re
import select
import sys
import time
import types
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import msgspec
import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, Timeout
from urllib3 import HTTPResponse as Urllib3Response
from urllib3.connection import HTTPConnection, HTTPSConnection, _ResponseOptions
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from config import PROVIDERS, SERVICES, USER_AGENT, Service, Settings
from proxy.envelope import RawJSON, details_from, passed_headers
from proxy.errors import (ExternalServiceError, NetworkError, ProxyError, UpstreamTimeoutError,
                          client_status)
from proxy.logs import SHORTEST_SECRET, RequestLog
from proxy.translations import TRANSLATIONS

_READ_SIZE = 64 * 1024


@dataclass
class Reply:
    """A provider's 2xx answer: a checked JSON body, or the chunks of an event stream."""

    headers: dict[str, str]
    body: RawJSON | None = None
    chunks: Iterator[bytes] | None = None


# The kernel's poll. Under gevent, select.poll is gevent's, which takes a trip through its hub
# even with a zero timeout (4% of a proxied request); a zero timeout never blocks, so the
# kernel's is safe in any worker. (Imported before or after gevent patches: right either way.)
_kernel_poll = (sys.modules["gevent.monkey"].get_original("select", "poll")
                if "gevent.monkey" in sys.modules else select.poll)


# A header block as providers send it: "name: value" lines, each ended by CRLF, then CRLF.
_PLAIN_HEADER_BLOCK = re.compile(r"(?:[!-9;-~]+:[^\r\n]*\r\n)*\r\n")


def _parse_headers(fp: Any) -> http.client.HTTPMessage:
    """http.client.parse_headers without the e-mail parser (~40 us of a proxied request).

    A plain block gives the message the e-mail parser would (same names, values, order);
    anything else (folded lines, bare LFs, a line that is no header) still goes through it.
    The block is read by http.client's own reader, with its line and count limits.
    """
    block = b"".join(http.client._read_headers(fp)).decode("iso-8859-1")
    if not _PLAIN_HEADER_BLOCK.fullmatch(block):
        return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(block)
    message = http.client.HTTPMessage()
    for line in block.split("\r\n")[:-2]:
        name, _, value = line.partition(":")
        message[name] = value.lstrip(" \t")
    message.set_payload("")  # what the e-mail parser leaves after the blank line
    return message


class _Response(http.client.HTTPResponse):
    # http.client's own begin() (status line, framing, keep-alive), run over a copy of the
    # module's globals in which parse_headers is ours.
    begin = types.FunctionType(http.client.HTTPResponse.begin.__code__,
                               {**vars(http.client), "parse_headers": _parse_headers})

    def _read_status(self) -> tuple[str, int, str]:
        """The status line of the final answer. An interim one (102, 103 Early Hints, any 1xx
        but 101) is skipped with its headers, as http.client skips only 100: taken for the
        answer, it left the real one on the connection for the next caller to read."""
        while True:
            version, status, reason = super()._read_status()
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            http.client._read_headers(self.fp)

    def _check_close(self) -> bool:
        # Where begin() decides whether the connection stays open: after a 101 it has changed
        # protocol, so it is never reused.
        return self.status < 200 or super()._check_close()


class _LeanConnection:
    """What our pools' connections do more cheaply than urllib3's, with the same results, and
    the time a request may take to send.

    Before reusing a pooled connection urllib3 asks whether the provider has closed it (an
    idle timeout does that): readable means closed, or bytes nobody asked for. Answered here
    by the kernel's poll. A request's headers are written in one piece, and a provider's
    header block is read without the e-mail parser. A request is sent under `send_timeout`
    (the read timeout), not the connect timeout urllib3 leaves on the socket.
    """

    sock: Any
    timeout: float | None
    response_class = _Response

    def __init__(self, *args: Any, send_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.send_timeout = send_timeout

    @property
    def is_connected(self) -> bool:
        if self.sock is None:
            return False
        poller = _kernel_poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def request(self, method: str, url: str, body: Any = None,
                headers: Mapping[str, str] | None = None, *, chunked: bool = False,
                preload_content: bool = True, decode_content: bool = True,
                enforce_content_length: bool = True) -> None:
        """urllib3's request(), for what this service sends: a bytes body, its Content-Length
        among the headers given. The header block is checked and written in one piece, not
        header by header (~35 us a request); http.client's putrequest still checks the method
        and URL, and its endheaders sends. Anything else goes to urllib3's own request()."""
        if (chunked or not isinstance(body, bytes) or not headers
                or "Content-Length" not in headers or "Host" in headers):
            return super().request(
                method, url, body, headers, chunked=chunked, preload_content=preload_content,
                decode_content=decode_content, enforce_content_length=enforce_content_length)
        lines = [f"{name}: {value}" for name, value in headers.items()]
        if not "".join(lines).isprintable():  # no line break or other control character
            raise ValueError("a request header holds a control character")
        if self.sock is None:
            self.connect()  # a plain-HTTP connection opens here; an HTTPS pool has opened it
        # urllib3 would send under the connect timeout, giving a 10 MB body 5 s to get through;
        # the provider has as long to take our bytes as to send its own.
        self.sock.settimeout(self.timeout if self.send_timeout is None else self.send_timeout)
        self._response_options = _ResponseOptions(
            request_method=method, request_url=url, preload_content=preload_content,
            decode_content=decode_content, enforce_content_length=enforce_content_length)
        self.putrequest(method, url, skip_accept_encoding=True)
        self._output("\r\n".join(lines).encode("latin-1"))
        self.endheaders(body)


class _HTTPConnection(_LeanConnection, HTTPConnection):
    pass


class _HTTPSConnection(_LeanConnection, HTTPSConnection):
    pass


class _ProviderAdapter(HTTPAdapter):
    """The Session's adapter, without the per-call work this service never needs.

    Every call of a service goes to the same URL, with no proxy and the default TLS settings,
    so its connection pool is looked up once (and makes our lean connections, above); and an
    answer gets no cookie jar or charset guess, as its bytes are relayed as they are. These are
    the hooks requests keeps for subclasses; send() itself, with its error translation, is
    requests' own.
    """

    def __init__(self, *, send_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pools: dict[str, HTTPConnectionPool] = {}
        self._send_timeout = send_timeout

    def get_connection_with_tls_context(self, request: requests.PreparedRequest,
                                        verify: Any, proxies: Any = None,
                                        cert: Any = None) -> HTTPConnectionPool:
        pool = self._pools.get(request.url)
        if pool is None:
            pool = self._pools[request.url] = super().get_connection_with_tls_context(
                request, verify, proxies, cert)
            pool.ConnectionCls = _HTTPSConnection if pool.scheme == "https" else _HTTPConnection
            pool.conn_kw["send_timeout"] = self._send_timeout
        return pool

    def close(self) -> None:
        super().close()  # forgets the pools, but leaves their connections open
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def request_url(self, request: requests.PreparedRequest, proxies: Any) -> str:
        return request.path_url  # never through a proxy

    def build_response(self, req: requests.PreparedRequest,
                       resp: Urllib3Response) -> requests.Response:
        response = requests.Response()
        response.status_code, response.headers, response.raw = resp.status, resp.headers, resp
        response.reason, response.url, response.request = resp.reason, req.url, req
        response.connection = self
        return response


def _session(settings: Settings) -> requests.Session:
    """A provider's connection pool: the Session's mounted adapter.

    Requests go to the adapter directly (see _send), so no environment proxy, ~/.netrc entry,
    session header or cookie jar ever takes part in them.
    """
    session = requests.Session()
    retries = Retry(total=None, connect=settings.upstream_retries, read=False, redirect=False,
                    status=0, other=0)  # read=False keeps a read timeout a Timeout (504)
    adapter = _ProviderAdapter(pool_connections=1, pool_maxsize=settings.upstream_pool_size,
                               max_retries=retries, send_timeout=settings.upstream_read_timeout)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


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
_json_value = msgspec.json.Decoder(msgspec.Raw)


def _is_json(body: bytes) -> bool:
    """Whether a provider's body is one JSON value in UTF-8 (RFC 8259: no NaN, no BOM, nothing
    after it). msgspec scans it into a Raw view: no Python object is built, so a 1 MB embeddings
    answer costs a scan (half of a parse) and no memory churn."""
    try:
        _json_value.decode(body)
    except (msgspec.DecodeError, RecursionError):  # nested past ~1000 levels: refused too
        return False
    if body.isascii():
        return True
    try:
        body.decode()  # the scan leaves the bytes inside strings to us
    except UnicodeDecodeError:
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


class Upstream:
    """The per-app pool: one Session per provider, URLs and headers built once at start."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # A urllib3 Timeout, which requests passes on as it is (a tuple it would convert per call).
        self._timeout = Timeout(connect=settings.upstream_connect_timeout,
                                read=settings.upstream_read_timeout)
        self._sessions = {name: _session(settings) for name in PROVIDERS}
        self._urls = {s.name: settings.base_urls[s.provider] + s.path for s in SERVICES.values()}
        self._adapters = {s.name: self._sessions[s.provider].get_adapter(self._urls[s.name])
                          for s in SERVICES.values()}
        self._headers = {p.name: {**p.default_headers,
                                  "Content-Type": "application/json",
                                  "Accept-Encoding": "identity",  # relayed as it comes
                                  "User-Agent": USER_AGENT}
                         for p in PROVIDERS.values()}

    def url(self, service: Service) -> str:
        return self._urls[service.name]

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()

    def forward(self, service: Service, api_key: str, payload: dict[str, Any],
                options: Mapping[str, str], log: RequestLog) -> Reply:
        """Send the payload; raise ProxyError for every answer but a usable 2xx."""
        to_upstream, from_upstream = TRANSLATIONS.get(service.translation, (None, None))
        sent = to_upstream(payload, self.settings.cohere_generate_model) if to_upstream else payload
        wants_stream = service.streams and payload.get("stream") is True
        started = time.perf_counter()
        response = self._send(service, api_key, sent, options, wants_stream)
        log.upstream_ms = round((time.perf_counter() - started) * 1000, 1)
        status = log.upstream_status = response.status_code
        key = _maskable(api_key)
        headers = _scrub_headers(passed_headers(response.headers), key)
        is_2xx = 200 <= status < 300
        if is_2xx and wants_stream and _is_event_stream(response):
            log.stream = True
            return Reply(headers, chunks=self._relay(response, service, key, log))

        body = _scrub(self._read(response, service), key)
        is_json = _is_json(body)
        if is_2xx and not is_json:
            raise ExternalServiceError(f"{service.name} answered {status} without JSON",
                                       service=service.name, upstream_status=status,
                                       details=details_from(body, None), headers=headers)
        if not is_2xx:
            # 101 and 3xx land here too: a redirect is never followed, it would carry the key.
            raw = RawJSON(body) if is_json else None
            raise ExternalServiceError(f"{service.name} answered {status}", service=service.name,
                                       status=client_status(status), upstream_status=status,
                                       details=details_from(body, raw), headers=headers)
        if from_upstream:
            body = _dumps(from_upstream(_parsed(body), payload["prompt"]))
        log.bytes_relayed = len(body)
        return Reply(headers, body=RawJSON(body))

    def _send(self, service: Service, api_key: str, payload: dict[str, Any],
              options: Mapping[str, str], wants_stream: bool) -> requests.Response:
        """POST through the provider's pooled adapter.

        The request is built here and handed to the Session's mounted adapter, skipping
        Session.request's per-call work (environment merging, cookies, hooks, redirect
        resolution) that this service needs none of. Redirects are never followed.
        """
        provider = PROVIDERS[service.provider]
        body = _dumps(payload)
        request = requests.PreparedRequest()
        request.method, request.url, request.body = "POST", self._urls[service.name], body
        # A plain dict: each name is set once, and urllib3 reads it at C speed.
        request.headers = {
            **self._headers[provider.name],
            provider.auth_header: provider.auth_prefix + api_key,
            "Accept": "text/event-stream" if wants_stream else "application/json",
            "Content-Length": str(len(body)),
            **options}
        try:
            return self._adapters[service.name].send(request, stream=True, timeout=self._timeout)
        except requests.RequestException as exc:
            raise _transport_error(exc, service.name) from None

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
        try:
            if raw.chunked:
                chunks = raw.read_chunked(decode_content=True)
            else:
                chunks = iter(lambda: raw.read1(_READ_SIZE, decode_content=True) or b"", b"")
            for chunk in chunks:
                log.relayed(len(chunk))
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
            response.close()


def _parsed(body: bytes) -> Any:
    """A checked body as Python values, for a translation; None for what only scans as JSON
    (a number past a double's range), which the translation reports as an unexpected shape."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None


def _is_event_stream(response: requests.Response) -> bool:
    # A compatible gateway that ignores stream=true answers JSON: treat that as a plain answer.
    return response.headers.get("Content-Type", "").lower().startswith("text/event-stream")
