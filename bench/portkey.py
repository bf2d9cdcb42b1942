"""Portkey's AI gateway (Node), run by bench/run.py beside the service as the reference the speed
targets were set against ("two thirds of Portkey's CPU"): measured in the same run, on the same
machine, its figures drift with the machine as ours do.

Installed from the npm registry on first use into a cache folder (scripts not run), started with
`node` on 127.0.0.1, and sent to the same nginx stand-in through its `x-portkey-custom-host`
header; it opens no connection but those (checked with strace: connect() to 127.0.0.1 only).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.service import cpu_seconds, free_port, wait_for_port

VERSION = "1.15.2"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "byok-proxy-bench"
# case: (Portkey's provider, the stand-in's base URL path, Portkey's route). Embeddings go
# through its Jina provider: its OpenAI one answers every embeddings call with a 500 in this
# version (a TypeError on the answer's immutable headers), while Jina's relays the same files.
ROUTES = {"chat": ("openai", "/v1", "/v1/chat/completions"),
          "33 KB embeddings": ("jina", "/v1", "/v1/embeddings"),
          "1 MB embeddings": ("jina", "/jina/v1", "/v1/embeddings")}


def available() -> str | None:
    """Why Portkey cannot run here, or None when it can."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found" if missing else None


class Portkey:
    """The gateway on a free loopback port, its provider calls sent to `upstream_root`."""

    def __init__(self, upstream_root: str, log: Path) -> None:
        self.upstream_root = upstream_root
        self.port = free_port()
        server = _install() / "node_modules/@portkey-ai/gateway/build/start-server.js"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["node", str(server), f"--port={self.port}", "--headless"],
                env={**os.environ, "NODE_ENV": "production"}, stdout=out,
                stderr=subprocess.STDOUT)
        if not wait_for_port(self.port, 30):
            self.stop()
            raise RuntimeError("Portkey's gateway did not start:\n" + log.read_text()[-2000:])

    def __repr__(self) -> str:
        return f"Portkey's gateway {VERSION}"

    def call(self, case: str) -> tuple[str, dict[str, str]]:
        """The route and headers of a `case` call through the gateway."""
        provider, base, route = ROUTES[case]
        return route, {"x-portkey-provider": provider,
                       "x-portkey-custom-host": self.upstream_root + base}

    def cpu_seconds(self) -> float:
        """User + system CPU of the node process."""
        return cpu_seconds([self.proc.pid])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _install() -> Path:
    folder = CACHE / f"portkey-{VERSION}"
    if not (folder / "node_modules/@portkey-ai/gateway").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(folder), "--no-audit", "--no-fund",
                        "--ignore-scripts", f"@portkey-ai/gateway@{VERSION}"],
                       check=True, capture_output=True, timeout=300)
    return folder
