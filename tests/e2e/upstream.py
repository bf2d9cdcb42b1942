"""A stand-in provider on 127.0.0.1, scripted per request by a `stub` key in the payload.

The proxy forwards the payload untouched, so a test chooses the behaviour it needs:
`{"stub": "sse", "events": [...], "interval": 0.05}`. Every request is recorded with its
path, headers (in order), body and client port, for assertions.
"""
from __future__ import annotations

import json
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable


# What Cohere's /v2/chat answers: cohere_generate's translated request gets this.
COHERE_CHAT_ANSWER = {
    "id": "chat-1", "finish_reason": "COMPLETE",
    "message": {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]},
    "usage": {"billed_units": {"input_tokens": 2, "output_tokens": 2}}}


class Recorded(dict):
    """One request as the stand-in saw it: path, headers, body, port."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real providers
    server: "_Server"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self.server.stub.record(self, b"", {})
        self._send(200, b'{"redirected": true}')

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        payload = json.loads(raw) if raw else {}
        self.server.stub.record(self, raw, payload)
        getattr(self, "_" + payload.get("stub", "json"))(payload)

    # -- helpers -------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _reset_connection(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    # -- behaviours, one per `stub` value ----------------------------------------------------
    def _json(self, payload: dict) -> None:
        body = payload.get("answer_raw")
        if body is None:
            default = COHERE_CHAT_ANSWER if self.path.endswith("/v2/chat") else {
                "ok": True, "path": self.path}
            body = json.dumps(payload.get("answer", default))
        self._send(200, body.encode(), payload.get("headers"))

    def _status(self, payload: dict) -> None:
        body = payload.get("body", {"error": {"message": "scripted"}})
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self._send(payload["status"], raw, payload.get("headers"),
                   payload.get("content_type", "application/json"))

    def _interim(self, payload: dict) -> None:
        """Interim answers (`statuses`, e.g. 103 Early Hints) at once; the answer `delay` later."""
        for status in payload["statuses"]:
            self.send_response_only(status)
            self.send_header("Link", "</style.css>; rel=preload")
            self.end_headers()
        time.sleep(payload.get("delay", 0))
        self._json(payload)

    def _switch(self, payload: dict) -> None:
        """101 Switching Protocols, asked for or not; the connection stays open."""
        self.send_response_only(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.end_headers()

    def _json_then_hang_up(self, payload: dict) -> None:
        """Answer as kept alive (no Connection: close), then close it, as an idle timeout does."""
        self._json(payload)
        self.close_connection = True

    def _slow(self, payload: dict) -> None:
        time.sleep(payload["delay"])
        self._json({})

    def _reset(self, payload: dict) -> None:
        self._reset_connection()

    def _truncated(self, payload: dict) -> None:
        """Promise 1000 bytes, send a few, hang up (or, with `delay`, go silent first)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b'{"partial": ')
        self.wfile.flush()
        time.sleep(payload.get("delay", 0))
        self.close_connection = True

    _stall = _truncated  # with a `delay` past the proxy's read timeout

    def _redirect(self, payload: dict) -> None:
        # `loop`: back to the very URL asked for, as a misconfigured gateway does forever.
        target = self.path if payload.get("loop") else "/redirected"
        self._send(payload.get("status", 302), b'{"moved": true}',
                   {"Location": f"{self.server.stub.url}{target}"})

    def _big(self, payload: dict) -> None:
        """A valid JSON answer of about `size` bytes."""
        self._send(200, b'{"data": "' + b"x" * payload["size"] + b'"}')

    def _sse(self, payload: dict) -> None:
        """SSE, each event in its own chunk, `interval` apart; then `then`. With `framing`
        "close", no chunks: the events are written as they are and the connection closes after
        the last, as Gemini ends its streams."""
        close_delimited = payload.get("framing") == "close"
        self.send_response(200)
        self.send_header("Content-Type", payload.get("content_type", "text/event-stream"))
        if close_delimited:
            self.send_header("Connection", "close")
        else:
            self.send_header("Transfer-Encoding", "chunked")
        for name, value in payload.get("headers", {}).items():
            self.send_header(name, value)
        self.end_headers()
        send = self._write if close_delimited else self._chunk
        sent = self.server.stub.sent.setdefault(payload.get("id", ""), [])
        try:
            for i, event in enumerate(payload["events"]):
                if i:
                    time.sleep(payload.get("interval", 0))
                send(event.encode())
                sent.append((time.monotonic(), event))
            if close_delimited:
                self.close_connection = True
                return
            then = payload.get("then")
            if then:
                # Let the proxy read what was sent: an RST purges unread data in the kernel.
                time.sleep(0.2)
            if then == "reset":
                self._reset_connection()
            elif then == "stall":
                time.sleep(payload["delay"])
                self.close_connection = True
            else:
                self._chunk(b"")
        except OSError:
            self.close_connection = True

    def _sse_forever(self, payload: dict) -> None:
        """Events every `interval` until the proxy closes the connection; records when."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + payload.get("limit", 10)
        try:
            while time.monotonic() < deadline:
                self._chunk(b'data: {"delta": "token"}\n\n')
                time.sleep(payload.get("interval", 0.05))
        except OSError:
            self.server.stub.closed[payload["id"]] = time.monotonic()
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stub: "Upstream"

    def handle_error(self, request, client_address) -> None:
        # The proxy hanging up on a script (a timeout, a client gone) is part of the test.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Upstream:
    """The stand-in: `with Upstream() as up: up.url` ... `up.requests`."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.stub = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.requests: list[Recorded] = []
        self.sent: dict[str, list] = {}  # stream id -> [(time, event)]
        self.closed: dict[str, float] = {}  # stream id -> when the proxy hung up
        self._lock = threading.Lock()

    def record(self, handler: BaseHTTPRequestHandler, raw: bytes, payload: dict) -> None:
        with self._lock:
            self.requests.append(Recorded(
                path=handler.path, headers=list(handler.headers.items()), body=raw,
                payload=payload, port=handler.client_address[1]))

    def last(self) -> Recorded:
        return self.requests[-1]

    def __enter__(self) -> "Upstream":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _serve_each(server: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Hand each connection `server` accepts to `handle`, from a daemon thread, until it is
    closed."""
    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed
            handle(conn)

    threading.Thread(target=accept, daemon=True).start()


class TLSStandIn:
    """A TLS listener on 127.0.0.1 whose certificate (self-signed, made with openssl) no client
    trusts. It records every connection and every byte that arrives after a handshake."""

    def __init__(self, workdir: Path) -> None:
        cert, key = workdir / "cert.pem", workdir / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=30)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._server.getsockname()[1]}"
        self.connections = 0
        self.received = b""
        _serve_each(self._server, self._handshake)

    def _handshake(self, conn: socket.socket) -> None:
        self.connections += 1
        try:
            with self._context.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(2)
                self.received += tls.recv(65536)
        except (ssl.SSLError, OSError):
            conn.close()  # the client gave up in the handshake: nothing was sent

    def close(self) -> None:
        self._server.close()


class Blackhole:
    """A loopback listener whose accept queue is full: new connections time out."""

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(0)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(self._server.getsockname())
            self._fillers.append(filler)

    def close(self) -> None:
        for sock in [*self._fillers, self._server]:
            sock.close()


class SlowReader:
    """A provider on 127.0.0.1 that takes a request body `pace` bytes every 50 ms, or not at
    all when `pace` is None, then answers {} and closes. `taken` lists each body's bytes taken."""

    def __init__(self) -> None:
        self.pace: int | None = 200 * 1024  # 4 MB/s
        self.taken: list[int] = []
        self._server = socket.socket()
        # A small receive buffer, inherited by each connection: the sender feels the pace.
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen()
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._closed = threading.Event()
        _serve_each(self._server, lambda conn: threading.Thread(
            target=self._take, args=(conn, self.pace), daemon=True).start())

    def _take(self, conn: socket.socket, pace: int | None) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                if not (more := conn.recv(65536)):
                    return
                data += more
            head, _, body = data.partition(b"\r\n\r\n")
            length, taken = int(re.search(rb"(?i)content-length: *(\d+)", head)[1]), len(body)
            try:
                while taken < length:
                    if pace is None:
                        self._closed.wait(30)  # until the test ends
                        return
                    time.sleep(0.05)
                    if not (more := conn.recv(pace)):
                        return
                    taken += len(more)
            finally:
                self.taken.append(taken)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")

    def close(self) -> None:
        self._closed.set()
        self._server.close()
