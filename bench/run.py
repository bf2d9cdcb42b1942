"""What the proxy adds to every call, measured against direct calls to the same stand-in.

    .venv/bin/python bench/run.py [--runs 3] [--seconds 5]

Needs wrk and nginx from the system's packages (`apt-get install -y wrk nginx-light`). Starts
nginx on 127.0.0.1 serving fixed provider answers (a ~600-byte chat completion, 33 KB and 1 MB
embeddings, a 20-event SSE stream), the service under gunicorn with its default settings (the
Procfile's command), and for comparison a plain Flask + Session.post proxy under gthread, a
relay that only copies answers (bench/relay.py) and, where node and npm are found, Portkey's
gateway (bench/portkey.py). Runs every measurement --runs times, prints the medians as one
Markdown table, and stops all it started. Loopback only; every run is bounded by --seconds.

Throughput and CPU come from wrk; latency under load from bench/load.py's closed loop, which
times each request, over the requests that no host pause (bench/pauses.py) held up.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import portkey  # noqa: E402
from bench.load import closed_loop  # noqa: E402
from bench.pauses import PauseWatch  # noqa: E402
from bench.portkey import Portkey  # noqa: E402
from bench.service import Service, base_url_env, free_port, wait_for_port  # noqa: E402

# A key of the shape and length OpenAI issues today ("sk-proj-" and 156 more): the search for an
# echoed key costs more per MB the shorter the key (README, Performance).
KEY = "sk-proj-" + "".join(random.Random(3).choices(string.ascii_letters + string.digits + "-_",
                                                    k=156))
# case: (service, upstream path, the answer file)
CASES = {"chat": ("openai_chat", "/v1/chat/completions", "chat.json"),
         "33 KB embeddings": ("openai_embedding", "/v1/embeddings", "embed33k.json"),
         "1 MB embeddings": ("jina_embedding", "/jina/v1/embeddings", "embed1m.json")}
STREAM_PATH = "/v1/messages"


def answers(rng: random.Random) -> dict[str, bytes]:
    def embedding(i: int) -> dict:
        return {"object": "embedding", "index": i,
                "embedding": [rng.uniform(-0.1, 0.1) for _ in range(1536)]}

    chat = {"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion",
            "created": 1741569952, "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": "Hello! " + "How can I help you today? " * 8,
                "refusal": None, "annotations": []}, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 19, "completion_tokens": 80, "total_tokens": 99},
            "service_tier": "default", "system_fingerprint": "fp_06737a9306"}
    usage = {"prompt_tokens": 5, "total_tokens": 5}
    events = "".join(f'data: {{"choices":[{{"delta":{{"content":"tok{i}"}}}}]}}\n\n'
                     for i in range(19)) + "data: [DONE]\n\n"
    return {
        "chat.json": json.dumps(chat).encode(),
        "embed33k.json": json.dumps({"object": "list", "data": [embedding(0)],
                                     "model": "text-embedding-3-small", "usage": usage}).encode(),
        "embed1m.json": json.dumps({"object": "list", "data": [embedding(i) for i in range(31)],
                                    "model": "jina-embeddings-v3", "usage": usage}).encode(),
        "stream.sse": events.encode(),
    }


class Nginx:
    """Fixed answers at the providers' paths; POST is served like GET (error_page 405 trick)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        root = workdir / "www"
        files = answers(random.Random(7))
        self.sizes = {name: len(data) for name, data in files.items()}
        for _, path, name in CASES.values():
            (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / path.lstrip("/")).write_bytes(files[name])
        (root / STREAM_PATH.lstrip("/")).write_bytes(files["stream.sse"])
        conf = workdir / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  types {{ }}
  default_type application/json;
  keepalive_requests 10000000;
  client_body_temp_path {workdir};
  server {{
    listen 127.0.0.1:{self.port};
    root {root};
    error_page 405 =200 $uri;
    location = {STREAM_PATH} {{ default_type text/event-stream; }}
  }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(workdir)])
        if not wait_for_port(self.port, 5):
            raise RuntimeError("nginx did not start")

    def base_urls(self) -> dict[str, str]:
        """The service's settings that send every provider call here."""
        root = f"http://127.0.0.1:{self.port}"
        return {**base_url_env(root), "JINA_BASE_URL": f"{root}/jina/v1"}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


PAYLOAD = {"model": "m", "input": "hello world"}
PAYLOAD_BODY = json.dumps(PAYLOAD).encode()  # what a gateway that takes the key as a header gets


def proxy_body(service: str, stream: bool = False) -> bytes:
    payload = {**PAYLOAD, "stream": True} if stream else PAYLOAD
    return json.dumps({"target_service": service, "api_key": KEY, "payload": payload}).encode()


class WrkRun(NamedTuple):
    requests: int  # completed
    non_2xx: int


def wrk(port: int, path: str, body: bytes, connections: int, seconds: float,
        workdir: Path, headers: dict[str, str] | None = None) -> WrkRun:
    """A wrk run of `seconds`, the key sent as a bearer token besides any `headers`."""
    script = workdir / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n'
                      + "".join(f'wrk.headers["{name}"] = "{value}"\n'
                                for name, value in _headers(headers).items()))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{round(seconds)}s", "-s", str(script),
         f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
        timeout=seconds + 30)
    found = re.search(r"(\d+) requests in", out.stdout)
    if not found:
        raise RuntimeError(f"wrk failed: {out.stdout}{out.stderr}")
    done = int(found.group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    return WrkRun(done, int(bad.group(1)) if bad else 0)


def _headers(extra: dict[str, str] | None) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}", **(extra or {})}


def timed_requests(port: int, path: str, body: bytes, seconds: float,
                   first_byte: bool = False, headers: dict[str, str] | None = None) -> list[float]:
    """Sequential requests on one kept-alive connection; milliseconds each (to the first body
    byte when `first_byte`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = _headers(headers)
    times, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        if first_byte:
            response.read1(1)
            times.append((time.perf_counter() - started) * 1000)
            response.read()
        else:
            response.read()
            times.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}")
    conn.close()
    return times[len(times) // 10:]  # drop the warm-up tenth


def cpu_per_request(server: Service | Portkey, body: bytes, connections: int, seconds: float,
                    workdir: Path, path: str = "/api/proxy/external",
                    headers: dict[str, str] | None = None) -> tuple[float, float]:
    """(CPU milliseconds `server` spent per request, requests/s) in a wrk run."""
    before = server.cpu_seconds()
    run = wrk(server.port, path, body, connections, seconds, workdir, headers)
    if run.non_2xx:
        raise RuntimeError(f"{run.non_2xx} non-2xx answers from {server} ({path}, {body[:80]!r})")
    return (server.cpu_seconds() - before) * 1000 / run.requests, run.requests / seconds


def _percentiles(runs: list[dict[str, float]]) -> str:
    """Each percentile's median over the runs, in ms."""
    return " / ".join(f"{statistics.median(r[q] for r in runs):.1f}"
                      for q in ("p50", "p90", "p99", "max")) + " ms"


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def under_load(watch: PauseWatch, port: int, path: str, body: bytes, connections: int,
               seconds: float, headers: dict[str, str] | None = None) -> dict[str, float]:
    """Latency percentiles (ms) of a closed-loop run, over the requests no host pause held up,
    and the share of requests set aside ("held"). Where pauses held most of them (a 1 MB answer
    through a slow gateway takes seconds), what is left would be a biased few: all are kept."""
    times = closed_loop(port, path, body, _headers(headers), connections, seconds)
    kept = watch.unheld(times)
    if len(kept) < len(times) / 2:
        kept = [(end - start) * 1000 for start, end in times]
    return {"p50": pct(kept, 50), "p90": pct(kept, 90), "p99": pct(kept, 99), "max": max(kept),
            "held": 1 - len(kept) / len(times)}


def measure(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    watch = PauseWatch()
    nginx = Nginx(workdir)
    env = nginx.base_urls()
    naive_workers = 2 * (os.cpu_count() or 1) + 1  # gunicorn's usual advice for gthread
    rows: dict[str, dict[str, str]] = {}

    def put(row: str, case: str, value: str) -> None:
        rows.setdefault(row, {})[case] = value

    started: list[Service | Portkey] = []
    why_not = portkey.available()
    try:
        ours = Service(env)
        started.append(ours)
        naive = Service(env, app="bench.naive_proxy:app",
                        args=("-c", "python:bench", "-k", "gthread", "--threads", "8",
                              "-w", str(naive_workers)))
        started.append(naive)
        relay = Service(env, app="bench.relay:app")
        started.append(relay)
        gateway = None
        if not why_not:
            try:
                gateway = Portkey(f"http://127.0.0.1:{nginx.port}", workdir / "portkey.log")
            except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
                why_not = f"it did not install or start ({str(exc)[:300]})"
            else:
                started.append(gateway)
        for case, (service, path, name) in CASES.items():
            body = proxy_body(service)
            route, headers = gateway.call(case) if gateway else ("", {})
            if gateway:  # Node compiles its hot paths in the first seconds: not measured
                wrk(gateway.port, route, PAYLOAD_BODY, 16, 3, workdir, headers)
            for conns in (16, 64):
                rps, cpu, naive_rps, relay_cpu, portkey_cpu = [], [], [], [], []
                latency: dict[str, list[dict]] = {"ours": [], "naive": [], "portkey": []}
                for _ in range(args.runs):
                    ms, per_second = cpu_per_request(ours, body, conns, args.seconds, workdir)
                    cpu.append(ms)
                    rps.append(per_second)
                    latency["ours"].append(under_load(watch, ours.port, "/api/proxy/external",
                                                      body, conns, args.seconds))
                    # The references CPU is compared with, each right after ours: the machine's
                    # speed drifts by the minute, so they are read against ours run by run.
                    if conns == 16:
                        relay_cpu.append(cpu_per_request(relay, body, conns, args.seconds,
                                                         workdir)[0])
                    if gateway:
                        ms, _ = cpu_per_request(gateway, PAYLOAD_BODY, conns, args.seconds,
                                                workdir, route, headers)
                        latency["portkey"].append(under_load(
                            watch, gateway.port, route, PAYLOAD_BODY, conns, args.seconds,
                            headers))
                        if conns == 16:
                            portkey_cpu.append(ms)
                    naive_run = wrk(naive.port, "/api/proxy/external", body, conns, args.seconds,
                                    workdir)
                    naive_rps.append(naive_run.requests / args.seconds)
                    latency["naive"].append(under_load(watch, naive.port, "/api/proxy/external",
                                                       body, conns, args.seconds))
                put(f"requests/s, {conns} connections", case, f"{statistics.median(rps):,.0f}")
                put(f"plain Flask + Session.post proxy (gthread), requests/s, {conns} conn.", case,
                    f"{statistics.median(naive_rps):,.0f}")
                put(f"throughput vs plain proxy, {conns} connections", case,
                    f"{statistics.median(rps) / statistics.median(naive_rps):.2f}x")
                put(f"proxy CPU per request, {conns} connections", case,
                    f"{statistics.median(cpu):.2f} ms")
                for who, label in (("ours", "proxy"), ("naive", "plain proxy"),
                                   ("portkey", "Portkey")):
                    if latency[who]:
                        put(f"{label}: latency under load, {conns} conn., p50 / p90 / p99 / max",
                            case, _percentiles(latency[who]))
                put(f"proxy: p99 / p50 under load, {conns} connections", case,
                    f"{statistics.median(r['p99'] / r['p50'] for r in latency['ours']):.1f}")
                put(f"requests set aside as held by a host pause, {conns} conn. (all services)",
                    case, f"{statistics.median(r['held'] for v in latency.values() for r in v):.1%}")
                if relay_cpu:
                    put("copy-only relay (bench/relay.py), CPU per request, 16 conn.", case,
                        f"{statistics.median(relay_cpu):.2f} ms")
                    put("proxy CPU per request over the relay's, 16 connections", case,
                        f"{statistics.median(c - r for c, r in zip(cpu, relay_cpu)):+.2f} ms")
                if portkey_cpu:
                    put(f"Portkey gateway {portkey.VERSION} (Node), CPU per request, 16 conn.",
                        case, f"{statistics.median(portkey_cpu):.2f} ms")
                    put("proxy CPU per request / Portkey's, 16 connections", case,
                        f"{statistics.median(c / p for c, p in zip(cpu, portkey_cpu)):.2f}")
            p50, p99, portkey_p50 = [], [], []
            for _ in range(args.runs):
                direct = timed_requests(nginx.port, path, body, args.seconds / 2)
                proxied = timed_requests(ours.port, "/api/proxy/external", body, args.seconds / 2)
                p50.append(pct(proxied, 50) - pct(direct, 50))
                p99.append(pct(proxied, 99) - pct(direct, 99))
                if gateway:
                    through = timed_requests(gateway.port, route, PAYLOAD_BODY, args.seconds / 2,
                                             headers=headers)
                    portkey_p50.append(pct(through, 50) - pct(direct, 50))
            put("latency added, p50, 1 connection", case, f"+{statistics.median(p50):.2f} ms")
            put("latency added, p99, 1 connection", case, f"+{statistics.median(p99):.2f} ms")
            if portkey_p50:
                put("Portkey: latency added, p50, 1 connection", case,
                    f"+{statistics.median(portkey_p50):.2f} ms")
            put("answer size", case, f"{nginx.sizes[name]:,} bytes")
        first = []
        for _ in range(args.runs):
            direct = timed_requests(nginx.port, STREAM_PATH, b"{}", args.seconds / 2, True)
            proxied = timed_requests(ours.port, "/api/proxy/external",
                                     proxy_body("anthropic_claude", stream=True),
                                     args.seconds / 2, True)
            first.append(statistics.median(proxied) - statistics.median(direct))
        put("first streamed event, added (p50)", "chat", f"+{statistics.median(first):.2f} ms")
        put(f"memory after load, default settings ({len(ours.pids()) - 1} workers; master + "
            "workers, PSS)", "chat", f"{ours.memory_mb():.0f} MB")
        for service in started:
            service.stop()
        started.clear()
        two = Service({**env, "WEB_CONCURRENCY": "2"})
        started.append(two)
        for case, (service, _, _) in CASES.items():
            wrk(two.port, "/api/proxy/external", proxy_body(service), 64, args.seconds, workdir)
        put("memory after load, WEB_CONCURRENCY=2 (master + 2 workers, PSS)", "chat",
            f"{two.memory_mb():.0f} MB")
    finally:
        for service in started:
            service.stop()
        nginx.stop()
        # What was measured is printed even when a later step failed.
        cases = list(CASES)
        # The interpreter's build moves CPU per request by ~15%: say which one ran.
        print(f"Services run under {os.path.realpath(sys.executable)} "
              f"(Python {sys.version.split()[0]}).")
        print(f"Portkey not measured: {why_not}.\n" if why_not else "")
        lengths = [round(length * 1000) for _, length in watch.ends]
        print(f"Host pauses seen, per CPU (bench/pauses.py, at "
              f"{'real-time' if watch.realtime else 'ordinary'} priority): {len(lengths)}"
              + (f", {min(lengths)}-{max(lengths)} ms.\n" if lengths else ".\n"))
        print(f"| per proxied request (medians of {args.runs} runs) | " + " | ".join(cases) + " |")
        print("| --- |" + " --- |" * len(cases))
        for row, values in rows.items():
            print(f"| {row} | " + " | ".join(values.get(c, "") for c in cases) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    measure(parser.parse_args())


if __name__ == "__main__":
    main()
