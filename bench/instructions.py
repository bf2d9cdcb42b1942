"""Instructions per proxied request in one gunicorn worker, counted by callgrind.

    .venv/bin/python bench/instructions.py [--requests 150] [--repo ../other-checkout]

Wall-clock CPU on a shared machine drifts by 10-20% between runs; instruction counts repeat to
within 1%, so this is how a change is judged before the timed benchmark (bench/run.py). Needs
valgrind and nginx (`apt-get install -y valgrind nginx-light`). For each case the service runs
with its default settings but one worker, under valgrind, twice: once for a warm-up only, once
for the warm-up and --requests sequential calls on one kept-alive connection; the difference,
over --requests, is the cost of one request in the worker's user space (kernel time is not
counted). Loopback only; about a minute per case.
"""
from __future__ import annotations

import argparse
import http.client
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.run import CASES, KEY, Nginx, proxy_body  # noqa: E402
from bench.service import REPO, Service  # noqa: E402

WARM_UP = 20


def worker_instructions(env: dict[str, str], repo: Path, service: str, requests: int) -> int:
    """User-space instructions the worker ran from its start to its exit."""
    with tempfile.TemporaryDirectory(prefix="callgrind-") as out:
        valgrind = ("valgrind", "--tool=callgrind", "--trace-children=yes",
                    f"--callgrind-out-file={out}/callgrind.%p")
        server = Service({**env, "WEB_CONCURRENCY": "1"}, repo=repo, wrapper=valgrind,
                         start_seconds=180)
        try:
            worker = server.pids()[1]
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            body = proxy_body(service)
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
            for _ in range(WARM_UP + requests):
                conn.request("POST", "/api/proxy/external", body, headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"{service} answered {response.status}")
            conn.close()
        finally:
            server.stop()  # the worker exits, and callgrind writes its counts
        text = Path(out, f"callgrind.{worker}").read_text()
        return int(re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="the checkout to measure (default: this one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        nginx = Nginx(Path(workdir))
        env = nginx.base_urls()
        try:
            print(f"| {args.repo.resolve()} | instructions per request (worker, user space) |")
            print("| --- | --- |")
            for case in ("chat", "33 KB embeddings"):
                service = CASES[case][0]
                base = worker_instructions(env, args.repo, service, 0)
                loaded = worker_instructions(env, args.repo, service, args.requests)
                print(f"| {case} | {(loaded - base) / args.requests / 1e6:.2f} M |", flush=True)
        finally:
            nginx.stop()


if __name__ == "__main__":
    main()
