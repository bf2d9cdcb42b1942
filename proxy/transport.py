"""The transport under the provider Sessions: lean connections, the adapter, header parsing.

Everything that reaches into urllib3 or http.client lives here, so that proxy/upstream.py reads
as policy (what is sent, what is passed on, what is masked). The private names it relies on,
each pinned by requirements.txt and covered by tests/unit/test_transport.py:
- http.client.HTTPResponse.begin's code, run over a copy of the module's globals in which
  `parse_headers` is ours; http.client._read_headers (its line and count limits);
  HTTPResponse._read_status and _check_close (the interim-answer skip, closing after a 101);
  HTTPConnection._output (writing the header block in one piece);
- urllib3.connection._ResponseOptions, which urllib3's own request() fills the same way;
- gevent.monkey.get_original, for the kernel's poll under the gevent worker.
Public gevent API it uses: gevent.socket.wait_read and a check watcher on the hub's loop.
"""
from __future__ import annotations

import email.parser
import http.client
import re
import select
import socket
import sys
import time
import types
from typing import Any, Mapping

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool
from urllib3 import HTTPResponse as Urllib3Response
from urllib3.connection import HTTPConnection, HTTPSConnection, _ResponseOptions
from urllib3.util.retry import Retry

from config import Settings

# The kernel's poll. Under gevent, select.poll is gevent's, which takes a trip through its hub
# even with a zero timeout (4% of a proxied request); a zero timeout never blocks, so the
# kernel's is safe in any worker. (Imported before or after gevent patches: right either way.)
_kernel_poll = (sys.modules["gevent.monkey"].get_original("select", "poll")
                if "gevent.monkey" in sys.modules else select.poll)


class _LoopTurn:
    """Under the gevent worker, how long the worker's loop has been in its current turn.

    gevent reads a socket that is ready without yielding. When the provider answers before the
    proxy asks for the answer (and the client's next request is there as soon as the last is
    answered), a greenlet served one connection request after request while the worker's other
    connections waited: one request in a hundred took 20 times the median (README,
    Performance). So a provider call that comes late in a turn waits for its answer through
    the hub, which hands the next turn to whoever else is ready; early in a turn it reads the
    answer at once (waiting on every call, or past 1 ms, cost 5-9 % more CPU per request;
    past 4 ms, nothing measurable, with the same tail). A check watcher, run as each turn
    begins, marks the start; it is made on the first call, in the worker."""

    BUDGET = 0.004  # seconds of a turn after which a call yields: a few requests' work

    def __init__(self) -> None:
        monkey = sys.modules.get("gevent.monkey")
        patched = monkey is not None and monkey.is_module_patched("socket")
        self.get_hub: Any = sys.modules["gevent"].get_hub if patched else None
        self.wait_read: Any = sys.modules["gevent.socket"].wait_read if patched else None
        self.hub: Any = None
        self.watcher: Any = None  # held here so that it lives as long as the clock
        self.began = 0.0

    def overrun(self) -> bool:
        """Whether the current turn has run past the budget (False when not under gevent)."""
        if not self.get_hub:
            return False
        hub = self.get_hub()
        if hub is not self.hub:
            if self.hub is not None:
                return True  # another thread's hub: no clock there, so always take turns
            self.hub = hub  # and self.began is 0: this first call takes its turn
            self.watcher = hub.loop.check()
            self.watcher.ref = False  # the clock alone does not keep the loop running
            self.watcher.start(self._mark)
        return time.perf_counter() - self.began > self.BUDGET

    def _mark(self) -> None:
        self.began = time.perf_counter()


_turn = _LoopTurn()


# A header block as providers send it: "name: value" lines, each ended by CRLF, then CRLF.
_PLAIN_HEADER_BLOCK = re.compile(r"(?:[!-9;-~]+:[^\r\n]*\r\n)*\r\n")


def parse_headers(fp: Any) -> http.client.HTTPMessage:
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


class LeanResponse(http.client.HTTPResponse):
    # http.client's own begin() (status line, framing, keep-alive), run over a copy of the
    # module's globals in which parse_headers is ours.
    begin = types.FunctionType(http.client.HTTPResponse.begin.__code__,
                               {**vars(http.client), "parse_headers": parse_headers})

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
    response_class = LeanResponse

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

    def getresponse(self) -> Urllib3Response:
        """urllib3's, but late in a gevent loop turn the answer is waited for through the hub
        even when it has already arrived (_LoopTurn says why). The wait has the read timeout."""
        if _turn.overrun() and not (hasattr(self.sock, "pending") and self.sock.pending()):
            _turn.wait_read(self.sock.fileno(), timeout=self.timeout,
                            timeout_exc=socket.timeout("timed out"))
        return super().getresponse()


class LeanHTTPConnection(_LeanConnection, HTTPConnection):
    pass


class LeanHTTPSConnection(_LeanConnection, HTTPSConnection):
    pass


class ProviderAdapter(HTTPAdapter):
    """The Session's adapter, without the per-call work this service never needs.

    Every call to a provider goes to the same host, with no proxy and the default TLS settings,
    so its connection pool is looked up once per origin (and makes our lean connections, above):
    a path that holds a client's model name never adds a pool. An answer gets no cookie jar or
    charset guess, as its bytes are relayed as they are. These are the hooks requests keeps for
    subclasses; send() itself, with its error translation, is requests' own.
    """

    def __init__(self, *, send_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pools: dict[str, HTTPConnectionPool] = {}
        self._send_timeout = send_timeout

    def get_connection_with_tls_context(self, request: requests.PreparedRequest,
                                        verify: Any, proxies: Any = None,
                                        cert: Any = None) -> HTTPConnectionPool:
        origin = request.url[:request.url.find("/", request.url.find("//") + 2)]
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = super().get_connection_with_tls_context(
                request, verify, proxies, cert)
            pool.ConnectionCls = (LeanHTTPSConnection if pool.scheme == "https"
                                  else LeanHTTPConnection)
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


def provider_session(settings: Settings) -> requests.Session:
    """A provider's connection pool: the Session's mounted adapter.

    Requests go to the adapter directly (see proxy/upstream.py), so no environment proxy,
    ~/.netrc entry, session header or cookie jar ever takes part in them.
    """
    session = requests.Session()
    retries = Retry(total=None, connect=settings.upstream_retries, read=False, redirect=False,
                    status=0, other=0)  # read=False keeps a read timeout a Timeout (504)
    adapter = ProviderAdapter(pool_connections=1, pool_maxsize=settings.upstream_pool_size,
                              max_retries=retries, send_timeout=settings.upstream_read_timeout)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
