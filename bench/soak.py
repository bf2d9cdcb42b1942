"""Soak: good traffic mixed with every provider fault, at the highest rate the machine sustains.

    .venv/bin/python bench/soak.py [--seconds 150] [--warmup 20] [--clients 32]

Starts the tests' stand-in provider (tests/e2e/upstream.py), a TLS stand-in whose certificate
does not verify, a refused port, and the service under gunicorn with its default settings (plus
access tokens, and a 2 s read timeout so providers that never answer do not hold threads for
300 s). Closed-loop clients then send a weighted mix of requests (see MIX) as fast as answers
come back, and the script prints: requests sent, answers by status, answers that were not what
the contract says, any 500, and the service's memory (PSS) and open file descriptors at the start
and end of the steady state. It stops by itself and stops what it started.

Run as root, it re-runs itself in a network namespace of its own (`unshare --net`), where a
provider name that does not resolve fails at once and nothing can leave the machine; otherwise
the DNS fault is left out. Loopback only.
"""
from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.service import Service, free_port  # noqa: E402
from tests.e2e.upstream import TLSStandIn, Upstream  # noqa: E402

KEY = "sk-soak-NEVER-LOG-0b1c"
TOKEN = "tok-soak-NEVER-LOG-2d3e"
ISOLATED = os.environ.get("SOAK_ISOLATED") == "1"


def chat(**stub) -> dict:
    return {"target_service": "openai_chat", "api_key": KEY,
            "payload": {"model": "m", "messages": [{"role": "user", "content": "hi"}], **stub}}


# name: (weight, target service or raw body, expected status; None = the client hangs up)
MIX = {
    "chat": (40, chat(), 200),
    "33 KB answer": (10, chat(stub="big", size=33_000), 200),
    "stream": (10, chat(stream=True, stub="sse", events=["data: {\"n\": %d}\n\n" % i
                                                         for i in range(10)]), 200),
    "provider 429": (4, chat(stub="status", status=429, headers={"retry-after": "1"}), 429),
    "never answers": (1, chat(stub="slow", delay=4), 504),
    "half a body": (4, chat(stub="truncated"), 502),
    "reset": (4, chat(stub="reset"), 502),
    "invalid JSON": (4, chat(stub="json", answer_raw="not json"), 502),
    "10 MB answer": (0.3, chat(stub="big", size=10 * 1024 * 1024), 200),
    "redirect loop": (3, chat(stub="redirect", loop=True), 502),
    "bad certificate": (3, {**chat(), "target_service": "anthropic_claude"}, 502),
    "refused": (3, {**chat(), "target_service": "jina_embedding"}, 502),
    "unresolvable": (3, {**chat(), "target_service": "cohere_chat"}, 502),
    "bad JSON from client": (3, b'{"target_service": "openai_chat", "api_key": ', 400),
    "no access token": (2, chat(), 401),
    "hang up mid-stream": (2, chat(stream=True, stub="sse_forever", interval=0.05, id="soak"),
                           None),
}
if not ISOLATED:
    del MIX["unresolvable"]


class Client(threading.Thread):
    """One closed-loop client on a kept-alive connection: send, read the answer, repeat."""

    def __init__(self, url: str, stop_at: float, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.host, self.port = url.removeprefix("http://").split(":")
        self.stop_at, self.rng = stop_at, rng
        self.counts: collections.Counter = collections.Counter()  # (name, status)
        self.conn: http.client.HTTPConnection | None = None
        self.names, weights = list(MIX), [w for w, _, _ in MIX.values()]
        self.weights = weights
        self.last_body = b""
        self.unexpected: list[tuple[str, object, bytes]] = []  # (name, status, body)

    def run(self) -> None:
        while time.monotonic() < self.stop_at:
            name = self.rng.choices(self.names, self.weights)[0]
            try:
                status = self.hang_up() if MIX[name][2] is None else self.call(name)
            except OSError as e:
                status, self.last_body = "connection error", repr(e).encode()
                self.conn = None
            self.counts[name, status] += 1
            if status != (MIX[name][2] or "hung up"):
                self.unexpected.append((name, status, self.last_body[:400]))

    def call(self, name: str):
        _, body, _ = MIX[name]
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if name != "no access token":
            headers["Authorization"] = f"Bearer {TOKEN}"
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        self.conn.request("POST", "/api/proxy/external", body=data, headers=headers)
        response = self.conn.getresponse()
        self.last_body = response.read()
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return response.status

    def hang_up(self):
        data = json.dumps(MIX["hang up mid-stream"][1]).encode()
        with socket.create_connection((self.host, int(self.port)), timeout=10) as sock:
            sock.sendall(b"POST /api/proxy/external HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nAuthorization: Bearer %s\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (TOKEN.encode(), len(data), data))
            sock.recv(65536)
        return "hung up"


def open_fds(service: Service) -> int:
    total = 0
    for pid in service.pids():
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except FileNotFoundError:
            pass
    return total


def soak(seconds: float, warmup: float, clients: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    with Upstream() as upstream:
        tls = TLSStandIn(workdir)
        env = {"OPENAI_BASE_URL": f"{upstream.url}/v1", "ANTHROPIC_BASE_URL": tls.url,
               "JINA_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
               "CO_API_URL": "http://api.provider.invalid", "PROXY_ACCESS_TOKENS": TOKEN,
               "UPSTREAM_READ_TIMEOUT": "2", "UPSTREAM_CONNECT_TIMEOUT": "2"}
        service = Service(env)
        try:
            started = time.monotonic()
            stop_at = started + warmup + seconds
            threads = [Client(service.url, stop_at, random.Random(i)) for i in range(clients)]
            for thread in threads:
                thread.start()
            samples = []
            while time.monotonic() < stop_at:
                upstream.requests.clear()  # the stand-in's record would grow for ever
                upstream.closed.clear()
                elapsed = time.monotonic() - started
                if elapsed >= warmup:
                    samples.append((elapsed, service.memory_mb(), open_fds(service)))
                time.sleep(1)
            for thread in threads:
                thread.join(timeout=40)
            report(threads, samples, seconds + warmup, service)
        finally:
            service.stop()
            tls.close()
            shutil.rmtree(workdir, ignore_errors=True)


def report(threads: list[Client], samples: list, duration: float, service: Service) -> None:
    counts: collections.Counter = collections.Counter()
    for thread in threads:
        counts.update(thread.counts)
    sent = sum(counts.values())
    by_status = collections.Counter()
    wrong = collections.Counter()
    for (name, status), n in counts.items():
        by_status[status] += n
        if status != (MIX[name][2] or "hung up"):
            wrong[name, status] += n
    log = service.log_path.read_text(errors="replace")
    # Memory and descriptors: medians of the first, middle and last 10 s of the steady state.
    middle = len(samples) // 2
    windows = samples[:10], samples[middle - 5:middle + 5], samples[-10:]
    mem_start, mem_mid, mem_end = (statistics.median(m for _, m, _ in w) for w in windows)
    fds_start, _, fds_end = (statistics.median(f for _, _, f in w) for w in windows)
    print(f"| soak ({'network namespace' if ISOLATED else 'no namespace: DNS fault left out'}) "
          f"| {duration:.0f} s, {len(threads)} clients |")
    print("| --- | --- |")
    print(f"| requests sent | {sent} ({sent / duration:.0f}/s) |")
    print("| answers by status | " + ", ".join(
        f"{status}: {n}" for status, n in sorted(by_status.items(), key=str)) + " |")
    print(f"| 500s | {by_status.get(500, 0)} |")
    print(f"| answers not as the contract says | {sum(wrong.values())} "
          + (f"({dict(wrong)})" if wrong else "") + " |")
    print(f"| memory (PSS, master + workers), steady start -> middle -> end | {mem_start:.1f} "
          f"-> {mem_mid:.1f} -> {mem_end:.1f} MB ({(mem_end - mem_start) / mem_start * 100:+.1f}%"
          f"; peak {max(m for _, m, _ in samples):.1f} MB) |")
    print(f"| open file descriptors, steady start -> end | {fds_start:.0f} -> {fds_end:.0f} |")
    print(f"| key or token in the service's output | "
          f"{'YES' if KEY in log or TOKEN in log else 'no'} |")
    print(f"| mix | {', '.join(f'{name} {w}' for name, (w, _, _) in MIX.items())} |")
    for name, status, body in [u for thread in threads for u in thread.unexpected][:10]:
        print(f"\nnot as the contract says: {name} -> {status}: {body.decode(errors='replace')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150, help="steady state, after warm-up")
    parser.add_argument("--warmup", type=float, default=20)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    if (not ISOLATED and os.geteuid() == 0 and shutil.which("unshare")
            and subprocess.run(["unshare", "--net", "true"]).returncode == 0):
        # Again, in a network namespace of its own with only loopback up.
        os.execvp("unshare", ["unshare", "--net", "--", "sh", "-c",
                              'ip link set lo up && SOAK_ISOLATED=1 exec "$@"', "soak",
                              sys.executable, *sys.argv])
    soak(args.seconds, args.warmup, args.clients)


if __name__ == "__main__":
    main()
