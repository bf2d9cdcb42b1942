"""CPU per request of this checkout against another, in interleaved wrk runs.

    .venv/bin/python bench/compare.py ../other-checkout [--rounds 10] [--seconds 3]
        [--case chat] [--connections 16] [--other-python PATH] [--first-event]

The other side is another checkout, or (`.` with --other-python) this code under another
interpreter build, from a venv holding requirements.txt.

Two runs of bench/run.py minutes apart can differ by 10-20% on a shared machine; runs of two
services side by side, taking turns (A B, B A, ...), see the same load. Both run with default
settings against one nginx; the figure to read is the median of the per-round ratios. Needs
wrk and nginx; loopback only; each run is bounded by --seconds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.run import (CASES, Nginx, cpu_per_request, proxy_body,  # noqa: E402
                       timed_requests)
from bench.service import REPO, Service  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", type=Path, help="the checkout to compare with")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--case", choices=list(CASES), default="chat")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--other-python", default=sys.executable,
                        help="the interpreter the other side runs under (default: this one)")
    parser.add_argument("--first-event", action="store_true",
                        help="compare the time to a stream's first event on one connection "
                             "(median ms per round) instead of CPU per request")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        nginx = Nginx(Path(workdir))
        env = nginx.base_urls()
        body = proxy_body(CASES[args.case][0])
        stream_body = proxy_body("anthropic_claude", stream=True)

        def measure(service: Service) -> float:
            if args.first_event:
                return statistics.median(timed_requests(
                    service.port, "/api/proxy/external", stream_body, args.seconds, True))
            return cpu_per_request(service, body, args.connections, args.seconds,
                                   Path(workdir))[0]

        services = {}
        try:
            services["this"] = Service(env, repo=REPO)
            services["other"] = Service(env, repo=args.other, python=args.other_python)
            cpu: dict[str, list[float]] = {name: [] for name in services}
            for round_ in range(args.rounds):
                for name in sorted(services, reverse=round_ % 2 == 1):
                    cpu[name].append(measure(services[name]))
        finally:
            for service in services.values():
                service.stop()
            nginx.stop()
    ratio = statistics.median(t / o for t, o in zip(cpu["this"], cpu["other"]))
    for name, path, python in (("this", REPO, sys.executable),
                               ("other", args.other.resolve(), args.other_python)):
        what = "first streamed event" if args.first_event else "CPU"
        print(f"{name:5s} {path} ({python}): {what} {statistics.median(cpu[name]):.3f} ms per "
              f"request (median of {args.rounds}, lowest {min(cpu[name]):.3f})")
    print(f"this / other, median of the per-round ratios: {ratio:.3f}")


if __name__ == "__main__":
    main()
