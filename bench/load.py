"""A closed loop of kept-alive connections that times every request, for latency under load.

wrk reports only percentiles; with each request's start and end the requests that a host pause
(bench/pauses.py) held up can be set aside, so that the tail read is the service's own.
"""
from __future__ import annotations

import re
import selectors
import socket
import time

_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.I)


def _complete(buffer: bytes) -> bool:
    """Whether `buffer` holds a whole answer (Content-Length or chunked)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return False
    if not buffer.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"answered {buffer[:end].decode(errors='replace')!r}")
    length = _LENGTH.search(buffer, 0, end + 2)
    if length:
        return len(buffer) >= end + 4 + int(length.group(1))
    if _CHUNKED.search(buffer, 0, end + 2):
        return buffer.endswith(b"\r\n0\r\n\r\n")
    raise RuntimeError("an answer with neither Content-Length nor chunks")


def closed_loop(port: int, path: str, body: bytes, headers: dict[str, str], connections: int,
                seconds: float) -> list[tuple[float, float]]:
    """(start, end) in time.monotonic() of each request answered in `seconds`, each of the
    `connections` sending its next request as soon as its last is answered."""
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
               + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    selector = selectors.DefaultSelector()
    started: dict[socket.socket, float] = {}
    received: dict[socket.socket, bytes] = {}
    times: list[tuple[float, float]] = []
    deadline = time.monotonic() + seconds
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        selector.register(sock, selectors.EVENT_READ)
        started[sock], received[sock] = time.monotonic(), b""
        sock.sendall(request)
    try:
        while (now := time.monotonic()) < deadline:
            for key, _ in selector.select(deadline - now):
                sock = key.fileobj
                chunk = sock.recv(262144)
                if not chunk:
                    raise RuntimeError("the service closed a kept-alive connection")
                received[sock] += chunk
                if _complete(received[sock]):
                    end = time.monotonic()
                    times.append((started[sock], end))
                    started[sock], received[sock] = end, b""
                    sock.sendall(request)
    finally:
        for sock in started:
            sock.close()
        selector.close()
    return times
