"""The contract over real sockets: headers on the wire, statuses, faults, limits."""
import http.client
import json
import socket
import time

import pytest
import requests

from config import PROVIDERS, SERVICES, USER_AGENT
from tests.conftest import FAKE_KEY


def body(service="openai_chat", **payload):
    return {"target_service": service, "api_key": FAKE_KEY,
            "payload": {"model": "m", **payload}}


EXPECTED_PATH = {"openai_chat": "/v1/chat/completions", "openai_responses": "/v1/responses",
                 "openai_embedding": "/v1/embeddings", "anthropic_claude": "/v1/messages",
                 "jina_embedding": "/jina/v1/embeddings", "cohere_generate": "/cohere/v2/chat",
                 "cohere_chat": "/cohere/v2/chat", "cohere_embed": "/cohere/v2/embed",
                 "anthropic_count_tokens": "/v1/messages/count_tokens",
                 "jina_rerank": "/jina/v1/rerank", "cohere_rerank": "/cohere/v2/rerank",
                 "gemini_generate": "/google/v1beta/models/m:generateContent",
                 "gemini_embedding": "/google/v1beta/models/m:batchEmbedContents",
                 "gemini_count_tokens": "/google/v1beta/models/m:countTokens",
                 "mistral_chat": "/mistral/v1/chat/completions",
                 "mistral_fim": "/mistral/v1/fim/completions",
                 "mistral_embedding": "/mistral/v1/embeddings",
                 "deepseek_chat": "/deepseek/chat/completions",
                 "deepseek_fim": "/deepseek/beta/completions",
                 "openrouter_chat": "/openrouter/api/v1/chat/completions",
                 "groq_chat": "/groq/openai/v1/chat/completions",
                 "voyage_embedding": "/voyage/v1/embeddings", "voyage_rerank": "/voyage/v1/rerank"}


def test_every_service_has_its_expected_path_here():
    assert set(EXPECTED_PATH) == set(SERVICES)


@pytest.mark.parametrize("name", SERVICES)
def test_stand_in_sees_the_right_path_and_exactly_the_contract_headers(service, upstream, name):
    provider = PROVIDERS[SERVICES[name].provider]
    payload = ({"prompt": "hi"} if name == "cohere_generate" else
               {"model": "m", "stub": "json", "answer": {"id": "x", "message": {"content": []}}})
    sent = {"target_service": name, "api_key": FAKE_KEY, "payload": payload}
    # The client's own Authorization (its access token, if any) is never forwarded.
    authorization = service.headers.get("Authorization", "Bearer t")
    response = service.post(sent, headers={"Cookie": "c=1", "Authorization": authorization,
                                           "X-Forwarded-For": "10.0.0.1",
                                           "OpenAI-Organization": "org-1",
                                           "X-Title": "My assistant"})
    assert response.status_code == 200, response.text
    seen = upstream.last()
    assert seen["path"] == EXPECTED_PATH[name]
    headers = dict(seen["headers"])
    expected = {"Host", "Content-Length", "Content-Type", "Accept", "Accept-Encoding",
                "User-Agent", provider.auth_header, *provider.default_headers}
    expected |= {"OpenAI-Organization", "X-Title"} & set(provider.option_headers)
    assert set(headers) == expected
    assert headers[provider.auth_header] == provider.auth_prefix + FAKE_KEY
    assert headers["User-Agent"] == USER_AGENT
    assert headers["Accept-Encoding"] == "identity"


def on_one_connection(service, *sent: dict, pause: float = 0) -> list[requests.Response]:
    """Proxy calls one after another over one client connection, so that one worker, and its
    pool of provider connections, serves them all; `pause` seconds between them."""
    responses = []
    with requests.Session() as client:
        for each in sent:
            if responses:
                time.sleep(pause)
            responses.append(client.post(f"{service.url}/api/proxy/external", json=each,
                                         headers=service.headers, timeout=5))
    return responses


def test_upstream_connections_are_kept_alive(service, upstream):
    for response in on_one_connection(service, body(), body(), body()):
        assert response.status_code == 200
    assert len({r["port"] for r in upstream.requests[-3:]}) == 1


def test_a_kept_alive_connection_the_provider_closed_is_not_reused(service, upstream):
    """Providers close idle connections without warning: the proxy sees it before reusing one
    and opens another, instead of failing the next call."""
    # The pause lets the provider's close reach the proxy.
    for response in on_one_connection(service, body(stub="json_then_hang_up"), body(stub="json"),
                                      pause=0.2):
        assert response.status_code == 200, response.text
    first, second = upstream.requests[-2:]
    assert first["port"] != second["port"]


def test_an_interim_answer_is_skipped_and_never_left_for_the_next_caller(service, upstream):
    """A 102 or 103 Early Hints before the answer is not the answer: taken for one, it left the
    real answer on the pooled connection, and the next caller (another user) got it."""
    first, second = on_one_connection(
        service, body(stub="interim", statuses=[102, 103], delay=0.3, answer={"who": "first"}),
        body(stub="json", answer={"who": "second"}))
    assert (first.status_code, first.json()["data"]) == (200, {"who": "first"})
    assert (second.status_code, second.json()["data"]) == (200, {"who": "second"})
    assert upstream.requests[-1]["port"] == upstream.requests[-2]["port"]  # reused: it was clean


def test_a_switching_protocols_answer_is_a_502_and_its_connection_is_not_reused(service,
                                                                                  upstream):
    first, second = on_one_connection(service, body(stub="switch"), body(stub="json"))
    assert first.status_code == 502
    assert first.json()["error"]["upstreamStatus"] == 101
    assert second.status_code == 200
    assert upstream.requests[-1]["port"] != upstream.requests[-2]["port"]


def test_data_is_the_provider_body_byte_for_byte(service):
    raw = '{"x": 1e-05, "y": [1.0, 2.50], "z": "\\u00e9"}'
    response = service.post(body(stub="json", answer_raw=raw))
    rid = response.headers["X-Request-ID"]
    assert response.content == ('{"success":true,"data":' + raw + ',"requestId":"' + rid +
                                '"}').encode()


@pytest.mark.parametrize(("status", "client_status"), [
    (400, 400), (401, 401), (403, 403), (404, 404), (422, 422), (429, 429),
    (500, 502), (503, 502), (529, 502)])
def test_provider_status_reaches_the_client_as_the_contract_says(service, status, client_status):
    response = service.post(body(stub="status", status=status, headers={
        "Retry-After": "2", "x-request-id": "up-1", "Set-Cookie": "a=b"}))
    assert response.status_code == client_status
    error = response.json()["error"]
    assert (error["code"], error["upstreamStatus"]) == ("EXTERNAL_SERVICE_ERROR", status)
    assert error["details"] == {"error": {"message": "scripted"}}
    assert response.headers["Retry-After"] == "2"
    assert response.headers["X-Upstream-Request-ID"] == "up-1"
    assert "Set-Cookie" not in response.headers


def test_redirect_is_not_followed_and_the_key_stays_home(service, upstream):
    before = len(upstream.requests)
    response = service.post(body(stub="redirect"))
    assert response.status_code == 502
    assert response.json()["error"]["upstreamStatus"] == 302
    assert [r["path"] for r in upstream.requests[before:]] == ["/v1/chat/completions"]


def test_connection_refused_is_network_error(refused_service):
    response = refused_service.post(body())
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "NETWORK_ERROR"


def test_connect_timeout_is_upstream_timeout_504(blackhole_service):
    started = time.monotonic()
    response = blackhole_service.post(body())
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "UPSTREAM_TIMEOUT"
    assert elapsed < 5  # 0.5 s connect timeout, one retry


def test_no_first_byte_within_read_timeout_is_504(service):
    started = time.monotonic()
    response = service.post(body(stub="slow", delay=3))
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "UPSTREAM_TIMEOUT"
    assert time.monotonic() - started < 2.5  # the 1 s read timeout, not the 3 s delay


def test_stall_mid_body_is_504(service):
    response = service.post(body(stub="stall", delay=3))
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "UPSTREAM_TIMEOUT"


@pytest.mark.parametrize("stub", ["reset", "truncated"])
def test_reset_or_cut_short_is_network_error(service, stub):
    response = service.post(body(stub=stub))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "NETWORK_ERROR"


def test_body_over_the_limit_is_413_with_content_length(service, upstream):
    before = len(upstream.requests)
    response = service.post(body(input="x" * (10 * 1024 * 1024 + 1)))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert len(upstream.requests) == before


def test_chunked_body_over_the_limit_is_413(service, upstream):
    before = len(upstream.requests)
    piece = b"x" * (1024 * 1024)

    def chunks():
        yield b'{"target_service": "openai_chat", "api_key": "k", "payload": {"input": "'
        for _ in range(11):
            yield piece
        yield b'"}}'

    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    conn.request("POST", "/api/proxy/external", body=chunks(), encode_chunked=True,
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked",
                          **service.headers})
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "PAYLOAD_TOO_LARGE"
    conn.close()
    assert len(upstream.requests) == before


def test_small_chunked_body_is_accepted(service):
    data = json.dumps(body()).encode()
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    conn.request("POST", "/api/proxy/external", body=iter([data[:10], data[10:]]),
                 encode_chunked=True, headers={"Content-Type": "application/json",
                                               **service.headers})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    conn.close()


def _stalled_call(service, framing: str = "content-length") -> socket.socket:
    """A connection whose request body stops after its first bytes (the e2e services give up
    after CLIENT_BODY_TIMEOUT, 1 s)."""
    data = json.dumps(body()).encode()
    if framing == "chunked":
        head, start = b"Transfer-Encoding: chunked\r\n", b"a\r\n" + data[:10] + b"\r\n"
    else:
        head, start = b"Content-Length: %d\r\n" % len(data), data[:10]
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.sendall(b"POST /api/proxy/external HTTP/1.1\r\nHost: proxy\r\n"
                 b"Content-Type: application/json\r\n" + service.raw_headers + head + b"\r\n"
                 + start)
    return sock


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_request_body_that_stops_arriving_is_refused_and_its_connection_closed(
        service, upstream, framing):
    before = len(upstream.requests)
    with _stalled_call(service, framing) as sock:
        started, answer = time.monotonic(), b""
        while data := sock.recv(65536):  # until the service closes (else a timeout error)
            answer += data
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == {
        "code": "VALIDATION_ERROR",
        "message": "The request body stopped arriving: nothing came for 1 s."}
    assert 0.9 < elapsed < 5
    assert len(upstream.requests) == before


def test_stalled_request_bodies_hold_the_service_only_for_the_limit(service):
    # More stalled calls than the instance has gthread threads (2 workers x 8): without the
    # limit they held every thread for as long as their clients kept the connections open.
    stalled = [_stalled_call(service) for _ in range(40)]
    try:
        assert service.request("GET", "/api/proxy/health", timeout=20)[0] == 200
    finally:
        for sock in stalled:
            sock.close()


def test_a_slow_steady_body_and_an_idle_kept_alive_connection_are_not_cut(service):
    """The limit is on silence within a body: not on a body's whole time, nor on the idle
    time between calls on a kept-alive connection."""
    data = json.dumps(body()).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(data)),
               **service.headers}

    def slowly():
        for piece in (data[:10], data[10:20], data[20:]):
            yield piece
            time.sleep(0.6)  # 1.8 s in all, each pause under the 1 s limit

    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    conn.request("POST", "/api/proxy/external", body=slowly(), headers=headers)
    first = conn.getresponse()
    assert first.status == 200, first.read()
    first.read()
    sock = conn.sock
    time.sleep(1.5)  # idle past the limit
    conn.request("POST", "/api/proxy/external", body=data, headers=headers)
    second = conn.getresponse()
    assert second.status == 200, second.read()
    assert conn.sock is sock  # the same connection, kept alive
    conn.close()


def test_one_summary_line_per_request_in_json(service):
    response = service.post(body(stub="json"), headers={"X-Request-ID": "e2e-log-1"})
    assert response.status_code == 200
    time.sleep(0.2)
    lines = [json.loads(line) for line in service.log().splitlines()
             if '"e2e-log-1"' in line and '"proxied request"' in line]
    assert len(lines) == 1
    line = lines[0]
    assert set(line) >= {"level", "message", "timestamp", "requestId", "targetService", "url",
                         "payloadKeys", "status", "upstreamStatus", "durationMs", "stream"}
    assert (line["status"], line["upstreamStatus"], line["stream"]) == (200, 200, False)
    assert line["payloadKeys"] == ["model", "stub"]
    assert line["url"].endswith("/v1/chat/completions")


ODD_HEADERS = {"x-ratelimit-limit-requests": "60\r\n\tper minute", "x-request-id": "up\x01-1",
               "x-ratelimit-reset(tokens)": "1s", "Retry-After": "2"}


@pytest.mark.parametrize("answer", [
    {"stub": "status", "status": 200, "body": {"id": "x"}},
    {"stub": "status", "status": 429},
    {"stub": "sse", "stream": True, "events": ["data: {}\n\n"]}], ids=["200", "429", "stream"])
def test_odd_provider_headers_never_break_the_answer(service, answer):
    """A folded line, a stray control character or a name no HTTP header may have: gunicorn
    refuses such a header in an answer (a bare 500, outside the envelope). The first two are
    cleaned as RFC 9110 §5.5 says (each control run a space); a bad name is not passed."""
    response = service.post(body(**answer, headers=ODD_HEADERS))
    assert response.status_code == answer.get("status", 200), response.text
    if answer["stub"] == "sse":
        assert response.content == b"data: {}\n\n"
    else:
        assert response.json()["success"] is (response.status_code == 200)
    headers = response.headers
    assert headers["x-ratelimit-limit-requests"] == "60 per minute"
    assert headers["X-Upstream-Request-ID"] == "up -1"
    assert "x-ratelimit-reset(tokens)" not in headers
    assert headers["Retry-After"] == "2"
