"""Provider faults the other e2e files do not stage: a certificate that does not verify, a DNS
name that does not resolve, a redirect loop, a 10 MB answer, an answer that is not JSON, and a
large request taken slowly or never.
(Never answering, half a body, resets and refusals are in test_proxy.py.) Each gives its
documented code within its documented time."""
from __future__ import annotations

import json
import os
import socket
import shutil
import subprocess
import time

import pytest

from tests.conftest import FAKE_KEY
from tests.e2e.conftest import base_urls, start_service
from tests.e2e.upstream import SlowReader, TLSStandIn


def body(**payload) -> dict:
    return {"target_service": "openai_chat", "api_key": FAKE_KEY,
            "payload": {"model": "m", **payload}}


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed")
def test_a_certificate_that_does_not_verify_is_network_error_and_the_key_is_never_sent(
        tmp_path):
    tls = TLSStandIn(tmp_path)
    service = start_service(tmp_path / "svc", base_urls(tls.url))
    try:
        response, elapsed = timed(lambda: service.post(body()))
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "NETWORK_ERROR"
        assert elapsed < 3
        assert tls.connections >= 1  # the proxy did try
        assert tls.received == b""  # and gave up in the handshake: no request, no key
    finally:
        service.stop()
        tls.close()


def _can_isolate() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_isolate(), reason="needs root and unshare for a network namespace")
def test_a_name_that_does_not_resolve_is_network_error(tmp_path):
    # In its own network namespace the lookup fails at once and no query leaves the machine.
    urls = {name: url.replace("127.0.0.1:9", "api.provider.invalid")
            for name, url in base_urls("http://127.0.0.1:9").items()}
    service = start_service(tmp_path / "svc", urls, isolated=True)
    try:
        (status, answer), elapsed = timed(
            lambda: service.request("POST", "/api/proxy/external", body()))
        assert (status, answer["error"]["code"]) == (502, "NETWORK_ERROR")
        assert elapsed < 3
    finally:
        service.stop()


def test_a_redirect_loop_is_not_followed(service, upstream):
    before = len(upstream.requests)
    response, elapsed = timed(lambda: service.post(body(stub="redirect", loop=True,
                                                        status=307)))
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["code"], error["upstreamStatus"]) == ("EXTERNAL_SERVICE_ERROR", 307)
    assert len(upstream.requests) - before == 1  # one call, never a second
    assert elapsed < 2


def test_a_10_mb_answer_is_relayed_whole(service):
    size = 10 * 1024 * 1024
    response, elapsed = timed(lambda: service.post(body(stub="big", size=size)))
    assert response.status_code == 200
    assert response.content.endswith(b'"}') and len(response.json()["data"]["data"]) == size
    assert elapsed < 10


@pytest.mark.parametrize("answer", ["not json", '{"cut": ', "", "NaN", '{"a": 1}{"b": 2}'])
def test_a_2xx_answer_that_is_not_json_is_external_service_error(service, answer):
    response = service.post(body(stub="json", answer_raw=answer))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "EXTERNAL_SERVICE_ERROR"
    assert response.json()["error"]["upstreamStatus"] == 200


@pytest.mark.parametrize(("name", "head"), [
    ("a 100 KB option header", b"anthropic-version: " + b"v" * 100_000 + b"\r\n"),
    ("300 headers", b"".join(b"X-H%d: 1\r\n" % i for i in range(300))),
    ("a header without a colon", b"not a header\r\n"),
])
def test_absurd_headers_are_refused_by_the_server_before_the_app(service, upstream, name, head):
    """gunicorn answers these itself (README, Errors): a 4xx, never a 5xx, no provider call."""
    before = len(upstream.requests)
    data = json.dumps(body()).encode()
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(b"POST /api/proxy/external HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\n%s%sContent-Length: %d\r\n\r\n%s"
                     % (service.raw_headers, head, len(data), data))
        answer = sock.recv(65536)
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:200]
    assert len(upstream.requests) == before


@pytest.mark.parametrize("worker", ["gevent", "gthread"])
def test_a_large_body_is_sent_at_the_providers_pace_and_one_it_never_takes_is_504(tmp_path,
                                                                                  worker):
    """Sending is bounded by UPSTREAM_READ_TIMEOUT, not by the connect timeout (0.5 s here)
    that urllib3 leaves on the socket: a 6 MB body (images, long contexts) taken at a slow
    link's pace used to fail after 0.5 s as a NETWORK_ERROR."""
    reader = SlowReader()
    service = start_service(tmp_path / "svc", {**base_urls(reader.url),
                                               "GUNICORN_WORKER_CLASS": worker,
                                               "UPSTREAM_READ_TIMEOUT": "2"})
    large = body(input="x" * 6_000_000)

    def send():
        # A connection per call, closed after it: none is left for a worker to wait on when
        # the service stops.
        return service.post(large, timeout=20, headers={"Connection": "close"})

    try:
        response, elapsed = timed(send)
        assert response.status_code == 200, response.text
        assert elapsed > 1  # the provider took well over the connect timeout
        assert reader.taken[-1] > 6_000_000  # every byte of the body
        reader.pace = None
        response, elapsed = timed(send)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "UPSTREAM_TIMEOUT"
        assert 1.5 < elapsed < 8
    finally:
        service.stop()
        reader.close()
