"""RATE_LIMIT end to end: counters shared through a real redis-server on loopback, and what
happens when Redis goes away or hangs mid-run (each process falls back to its own counters)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
import requests

from tests.conftest import ACCESS_TOKENS, FAKE_KEY, SECRETS
from tests.e2e.conftest import base_urls, free_port, start_service

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"),
                                reason="redis-server is not installed (.ci/run installs it)")

BODY = {"target_service": "openai_chat", "api_key": FAKE_KEY, "payload": {"model": "m"}}


class RedisServer:
    """redis-server on 127.0.0.1, no persistence, started and stopped by the test."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def post(service, token: str, **kwargs) -> requests.Response:
    # A new connection each time, so the calls spread over the workers.
    return requests.post(f"{service.url}/api/proxy/external", json=BODY, timeout=10,
                         headers={"Authorization": f"Bearer {token}", "Connection": "close"},
                         **kwargs)


def test_two_instances_share_one_limit_through_redis(upstream, redis_server, tmp_path):
    env = {**base_urls(upstream.url), "RATE_LIMIT": "6/minute",
           "RATE_LIMIT_STORAGE_URI": redis_server.url,
           "PROXY_ACCESS_TOKENS": ",".join(ACCESS_TOKENS)}
    first = start_service(tmp_path / "a", env)
    second = start_service(tmp_path / "b", env)
    try:
        statuses = [post(instance, ACCESS_TOKENS[0]).status_code
                    for instance in (first, second) * 3]
        assert statuses == [200] * 6
        over = post(second, ACCESS_TOKENS[0])
        assert over.status_code == 429
        assert over.json()["error"]["code"] == "RATE_LIMITED"
        assert 1 <= int(over.headers["Retry-After"]) <= 60
        assert post(first, ACCESS_TOKENS[0]).status_code == 429
        assert post(first, ACCESS_TOKENS[1]).status_code == 200  # another caller, another count
        keys = [key.decode() for key in redis_server.client.keys("*")]
        assert keys and all(key.startswith("LIMITS:{LIMITER/byok-proxy/token:") for key in keys), keys
        stored = " ".join(keys)
        assert not any(secret in stored for secret in SECRETS)
    finally:
        first.stop()
        second.stop()


def test_when_redis_goes_away_each_process_counts_alone_and_says_so(upstream, redis_server,
                                                                     tmp_path):
    service = start_service(tmp_path / "svc", {
        **base_urls(upstream.url), "RATE_LIMIT": "4/minute", "WEB_CONCURRENCY": "1",
        "RATE_LIMIT_STORAGE_URI": redis_server.url, "PROXY_ACCESS_TOKENS": ACCESS_TOKENS[0]})
    try:
        assert [post(service, ACCESS_TOKENS[0]).status_code for _ in range(2)] == [200, 200]
        redis_server.stop()
        # Fail open to this process's own counters, which start afresh with the same limit.
        started = time.monotonic()
        statuses = [post(service, ACCESS_TOKENS[0]).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 200, 429]
        assert time.monotonic() - started < 5
        assert "Rate limit storage unreachable" in service.log()

        # Redis comes back (empty: no persistence) on the same port; the process rechecks it
        # with a backoff of a few seconds and goes back to the shared counters.
        back = RedisServer(tmp_path / "redis-again", redis_server.port)
        try:
            deadline = time.monotonic() + 15
            while "Rate limit storage recovered" not in service.log():
                assert time.monotonic() < deadline, "no recovery logged"
                post(service, ACCESS_TOKENS[0])
                time.sleep(0.5)
            assert back.client.keys("*"), "counting in Redis again"
        finally:
            back.stop()
    finally:
        service.stop()


def test_a_hanging_redis_costs_at_most_its_timeout(upstream, redis_server, tmp_path):
    service = start_service(tmp_path / "svc", {
        **base_urls(upstream.url), "RATE_LIMIT": "100/minute", "WEB_CONCURRENCY": "1",
        "RATE_LIMIT_STORAGE_URI": redis_server.url})
    try:
        assert post(service, "none").status_code == 200
        os.kill(redis_server.proc.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
        started = time.monotonic()
        answers = [post(service, "none").status_code for _ in range(3)]
        elapsed = time.monotonic() - started
        assert answers == [200, 200, 200]
        # The first call waits out the 1 s socket timeout; the next ones use memory at once.
        assert elapsed < 4, elapsed
        assert "Rate limit storage unreachable" in service.log()
    finally:
        service.stop()
