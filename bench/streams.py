"""How many concurrent open streams one instance holds (loopback only, bounded in time).

    .venv/bin/python bench/streams.py [--streams 1000] [--worker-class gevent] [--hold 20]

Starts an asyncio stand-in provider that answers every chat call with an SSE stream (one event a
second for --hold seconds), starts the service under gunicorn with its default settings but the
worker class, opens --streams streams at once through it, and prints how many were open at the
same time, the errors, and the service's peak memory (master + workers). Stops by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.service import Service, base_url_env  # noqa: E402

EVENT = b'data: {"choices":[{"delta":{"content":"tok"}}]}\n\n'


class StandIn:
    """An SSE provider in asyncio: cheap per connection, never the bottleneck."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.open = 0
        self.peak = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after another on this connection
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                self.open += 1
                self.peak = max(self.peak, self.open)
                try:
                    deadline = time.monotonic() + self.hold
                    while time.monotonic() < deadline:
                        writer.write(b"%x\r\n%s\r\n" % (len(EVENT), EVENT))
                        await writer.drain()
                        await asyncio.sleep(1)
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                finally:
                    self.open -= 1
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the proxy closed its kept-alive connection, or the bench is ending
        finally:
            writer.close()


async def one_stream(port: int, opened: list, results: dict, all_open: asyncio.Event) -> None:
    body = json.dumps({"target_service": "openai_chat", "api_key": "sk-bench",
                       "payload": {"model": "m", "stream": True}}).encode()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /api/proxy/external HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            results["bad status"] = results.get("bad status", 0) + 1
            return
        data = b""
        while EVENT not in data:
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError("ended before the first event")
            data += chunk
        opened.append(time.monotonic())
        if len(opened) == results["target"]:
            all_open.set()
        while chunk := await reader.read(65536):
            data += chunk
        if b"event: error" in data or not data.endswith(b"0\r\n\r\n"):
            results["broken stream"] = results.get("broken stream", 0) + 1
        else:
            results["completed"] = results.get("completed", 0) + 1
        writer.close()
    except (OSError, asyncio.IncompleteReadError) as exc:
        results[type(exc).__name__] = results.get(type(exc).__name__, 0) + 1


async def run(args: argparse.Namespace) -> int:
    stand_in = StandIn(args.hold)
    server = await asyncio.start_server(stand_in.handle, "127.0.0.1", 0, backlog=4096)
    root = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    service = Service({**base_url_env(root), "GUNICORN_WORKER_CLASS": args.worker_class})
    try:
        idle_mb = service.memory_mb()
        results: dict = {"target": args.streams}
        opened: list = []
        all_open = asyncio.Event()
        started = time.monotonic()
        peak_mb = idle_mb

        async def sample_memory() -> None:
            nonlocal peak_mb
            while True:
                peak_mb = max(peak_mb, service.memory_mb())
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample_memory())
        tasks = [asyncio.create_task(one_stream(service.port, opened, results, all_open))
                 for _ in range(args.streams)]
        try:
            await asyncio.wait_for(all_open.wait(), timeout=args.hold)
            all_open_after = time.monotonic() - started
        except asyncio.TimeoutError:
            all_open_after = None
        open_at_peak = stand_in.peak
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.hold + 30)
        sampler.cancel()
    finally:
        service.stop()
        server.close()
        await server.wait_closed()
    del results["target"]
    errors = {k: v for k, v in results.items() if k != "completed"}
    print(f"worker class            {args.worker_class} (other settings default)")
    print(f"streams requested       {args.streams}")
    print(f"open at once (provider) {open_at_peak}")
    print(f"all open after          "
          f"{'%.1f s' % all_open_after if all_open_after is not None else 'never'}")
    print(f"completed               {results.get('completed', 0)}")
    print(f"errors                  {errors or 'none'}")
    print(f"service memory          {idle_mb:.0f} MB idle, {peak_mb:.0f} MB peak (master + workers)")
    return 0 if not errors and open_at_peak >= args.streams else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--worker-class", default="gevent", choices=["gevent", "gthread"])
    parser.add_argument("--hold", type=float, default=20, help="seconds each stream stays open")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.streams + 256)), hard))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
