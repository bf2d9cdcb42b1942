"""End-to-end fixtures: the real service under gunicorn, against stand-in providers, on loopback."""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ACCESS_TOKENS, SECRETS
from tests.e2e.upstream import Blackhole, Upstream

REPO = Path(__file__).resolve().parents[2]
STARTED: list["RunningService"] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_urls(root: str) -> dict[str, str]:
    """Every provider's base-URL variable pointed at one stand-in, each under its own prefix."""
    return {"OPENAI_BASE_URL": f"{root}/v1", "ANTHROPIC_BASE_URL": root,
            "JINA_BASE_URL": f"{root}/jina/v1", "CO_API_URL": f"{root}/cohere",
            "GOOGLE_GEMINI_BASE_URL": f"{root}/google", "MISTRAL_BASE_URL": f"{root}/mistral",
            "DEEPSEEK_BASE_URL": f"{root}/deepseek",
            "OPENROUTER_BASE_URL": f"{root}/openrouter/api/v1", "GROQ_BASE_URL": f"{root}/groq",
            "VOYAGE_BASE_URL": f"{root}/voyage/v1"}


class RunningService:
    """gunicorn in a subprocess on 127.0.0.1 (the -b flag overrides the config's bind)."""

    def __init__(self, workdir: Path, env: dict[str, str], *, isolated: bool = False) -> None:
        """`isolated`: in a network namespace of its own (root only), where nothing it sends
        can leave the machine, not even a DNS query; reached over a Unix socket."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket_path = workdir / "service.sock" if isolated else None
        bind = f"unix:{self.socket_path}" if isolated else f"127.0.0.1:{self.port}"
        prefix = ["unshare", "--net", "--"] if isolated else []
        self.log_path = workdir / "service.log"
        tokens = env.get("PROXY_ACCESS_TOKENS")
        # What every call to this instance sends: its access token, when it has any.
        self.headers = {"Authorization": f"Bearer {tokens.split(',')[0]}"} if tokens else {}
        self.raw_headers = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()).encode()
        full_env = {**os.environ, "LOG_LEVEL": "DEBUG", "WEB_CONCURRENCY": "2",
                    "UPSTREAM_CONNECT_TIMEOUT": "0.5", "UPSTREAM_READ_TIMEOUT": "1",
                    "UPSTREAM_RETRIES": "1", "CLIENT_BODY_TIMEOUT": "1",
                    # Proxies from the environment must be ignored: these lead nowhere.
                    "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                    "NO_PROXY": "",
                    # gunicorn 27's control socket lives here: one per instance.
                    "XDG_RUNTIME_DIR": str(workdir), **env}
        full_env.pop("GUNICORN_CMD_ARGS", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                 "-b", bind, "app:app"],
                cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_ready()

    def _wait_until_ready(self, deadline_s: float = 15) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if self.request("GET", "/api/proxy/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.fail(f"service did not start; log tail:\n{self.log()[-3000:]}")

    def request(self, method: str, path: str, body: dict | None = None,
                timeout: float = 10) -> tuple[int, dict]:
        """One call over a new connection (TCP, or the Unix socket when isolated)."""
        if self.socket_path:
            conn = http.client.HTTPConnection("localhost", timeout=timeout)
            conn.sock = socket.socket(socket.AF_UNIX)
            conn.sock.settimeout(timeout)
            conn.sock.connect(str(self.socket_path))
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json", **self.headers})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, body: dict, **kwargs) -> requests.Response:
        return requests.post(f"{self.url}/api/proxy/external", json=body,
                             timeout=kwargs.pop("timeout", 10),
                             headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers, timeout=5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_service(workdir: Path, env: dict[str, str], **kwargs) -> RunningService:
    service = RunningService(workdir, env, **kwargs)
    STARTED.append(service)
    return service


@pytest.fixture(scope="session")
def upstream():
    with Upstream() as stand_in:
        yield stand_in


# Each scenario runs twice: open under gthread, and under gevent behind access tokens and a
# rate limit high enough never to bite, so the secret sweep covers the tokens in every one.
GUARDED = {"PROXY_ACCESS_TOKENS": ",".join(ACCESS_TOKENS), "RATE_LIMIT": "100000/minute"}


@pytest.fixture(scope="session", params=["gthread", "gevent-guarded"])
def service(request, upstream, tmp_path_factory):
    worker_class, _, guarded = request.param.partition("-")
    running = start_service(tmp_path_factory.mktemp(request.param), {
        **base_urls(upstream.url), "GUNICORN_WORKER_CLASS": worker_class,
        **(GUARDED if guarded else {})})
    yield running
    running.stop()


@pytest.fixture(scope="session")
def refused_service(tmp_path_factory):
    running = start_service(tmp_path_factory.mktemp("refused"),
                            base_urls(f"http://127.0.0.1:{free_port()}"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def blackhole_service(tmp_path_factory):
    hole = Blackhole()
    running = start_service(tmp_path_factory.mktemp("blackhole"), base_urls(hole.url))
    yield running
    running.stop()
    hole.close()


@pytest.fixture(autouse=True)
def service_logs_hold_no_key_and_only_json():
    """After every e2e test: nothing any service printed (at DEBUG) holds a key or an access
    token, and every line is one JSON object."""
    yield
    for running in STARTED:
        text = running.log()
        assert not any(secret in text for secret in SECRETS), running.log_path
        for line in text.splitlines():
            assert isinstance(json.loads(line), dict), line
