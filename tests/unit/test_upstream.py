import email.parser
import http.client
import io
import json
import shutil
import socket
import ssl
import subprocess
import threading
import types
from typing import Iterable, Iterator

import pytest
import requests
import urllib3.connection
import urllib3.exceptions

from config import SERVICES
from proxy.envelope import passed_headers
from proxy.errors import NetworkError, client_status
from proxy.logs import RequestLog
from proxy.transport import LeanHTTPConnection, LeanHTTPSConnection, LeanResponse
from proxy.upstream import Upstream, _maskable, _transport_error
from tests.conftest import FAKE_KEY
from tests.unit.conftest import body, make_settings, service_url

URL = service_url("openai_chat")


def post(client, **extra):
    return client.post("/api/proxy/external", json=body(**extra))


# One row per line of the contract's error table for provider answers.
@pytest.mark.parametrize(("upstream", "client_gets"), [
    (400, 400), (401, 401), (402, 402), (403, 403), (404, 404), (408, 408), (409, 409),
    (413, 413), (422, 422), (429, 429), (498, 498), (499, 499),
    (500, 502), (502, 502), (503, 502), (504, 502), (529, 502),
    (301, 502), (302, 502), (307, 502), (308, 502),
])
def test_provider_status_maps_to_client_status(client, mocked, upstream, client_gets):
    mocked.post(URL, status=upstream, json={"error": {"message": "nope", "type": "x"}},
                headers={"Location": "http://127.0.0.9:9/elsewhere"})
    response = post(client)
    assert response.status_code == client_gets
    error = response.get_json()["error"]
    assert error == {"code": "EXTERNAL_SERVICE_ERROR", "message": f"openai_chat answered {upstream}",
                     "service": "openai_chat", "upstreamStatus": upstream,
                     "details": {"error": {"message": "nope", "type": "x"}}}
    assert len(mocked.calls) == 1  # a redirect is never followed


@pytest.mark.parametrize("status", range(400, 600))
def test_client_status_is_a_pure_function_of_the_number(status):
    assert client_status(status) == (status if status < 500 else 502)


@pytest.mark.parametrize(("exc", "status", "code"), [
    (requests.exceptions.ConnectTimeout(), 504, "UPSTREAM_TIMEOUT"),
    (requests.exceptions.ReadTimeout(), 504, "UPSTREAM_TIMEOUT"),
    (requests.exceptions.ConnectionError(), 502, "NETWORK_ERROR"),
    (requests.exceptions.ChunkedEncodingError(), 502, "NETWORK_ERROR"),
    (requests.exceptions.SSLError(), 502, "NETWORK_ERROR"),
    (requests.exceptions.ProxyError(), 502, "NETWORK_ERROR"),
])
def test_transport_failure_maps_to_its_code(client, mocked, exc, status, code):
    mocked.post(URL, body=exc)
    response = post(client)
    assert response.status_code == status
    assert response.get_json()["error"] == {
        "code": code, "service": "openai_chat",
        "message": ("openai_chat did not answer in time" if status == 504
                    else "the connection to openai_chat failed")}


@pytest.mark.parametrize(("exc", "code"), [
    (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), "UPSTREAM_TIMEOUT"),
    (urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead"), "NETWORK_ERROR"),
    (ConnectionResetError(104, "reset"), "NETWORK_ERROR"),
    (requests.ConnectionError(urllib3.exceptions.ProtocolError("reset")), "NETWORK_ERROR"),
])
def test_failures_while_reading_the_body_are_classified(exc, code):
    assert _transport_error(exc, "openai_chat").code == code


def test_success_data_is_the_provider_body_byte_for_byte(client, mocked):
    raw = b'{"b": 1e-05, "a": [1.0, 2.50], "u": "\\u00e9t\xc3\xa9",  "n": 12345678901234567890}'
    mocked.post(URL, body=raw, content_type="application/json")
    response = post(client)
    assert response.status_code == 200
    rid = response.headers["X-Request-ID"]
    assert response.data == b'{"success":true,"data":' + raw + b',"requestId":"' + rid.encode() + b'"}'
    assert response.get_json()["data"]["b"] == 1e-05


@pytest.mark.parametrize("raw", [
    b"", b"<html>oops</html>", b'{"a": NaN}', b'{"a":', b"\xff\xfe", b"\xef\xbb\xbf{}",
    b'{"a": 1} {"b": 2}', b'{"a": "\\ud800"}', b'{"a": "\xff"}', b'{"a": "\xed\xa0\x80"}',
    b'{"a": "\xc0\xaf"}', b'{"a": "tab\there"}', b"[" * 2000 + b"]" * 2000])
def test_2xx_without_valid_json_is_502(client, mocked, raw):
    mocked.post(URL, body=raw, status=200)
    response = post(client)
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert (error["code"], error["upstreamStatus"]) == ("EXTERNAL_SERVICE_ERROR", 200)


@pytest.mark.parametrize("raw", ['{"t": "é – 日本 🙂"}',
                                 "[1e400, -0, 123456789012345678901234567890]"])
def test_any_valid_json_in_utf8_is_relayed_byte_for_byte(client, mocked, raw):
    mocked.post(URL, body=raw.encode(), status=200)
    response = post(client)
    assert response.status_code == 200
    assert response.data.startswith(b'{"success":true,"data":' + raw.encode() + b',')


def test_non_json_error_body_is_text_cut_to_2kb(client, mocked):
    mocked.post(URL, status=503, body="é" * 3000, content_type="text/html")
    details = post(client).get_json()["error"]["details"]
    assert isinstance(details, str) and details == "é" * 1024
    assert len(details.encode()) <= 2048


def test_provider_error_body_is_passed_as_sent(client, mocked):
    raw = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"r1"}'
    mocked.post(service_url("anthropic_claude"), status=529, body=raw)
    response = post(client, service="anthropic_claude")
    assert response.status_code == 502
    assert b'"details":' + raw + b"}" in response.data


def test_rate_limit_headers_and_request_id_pass_through_on_errors(client, mocked):
    mocked.post(URL, status=429, json={"error": {}}, headers={
        "Retry-After": "7", "retry-after-ms": "7000", "x-ratelimit-remaining-requests": "0",
        "x-should-retry": "true", "x-request-id": "req_up_1", "Set-Cookie": "s=1",
        "Server": "cloudflare", "openai-processing-ms": "12"})
    response = post(client)
    assert response.status_code == 429
    h = response.headers
    assert (h["Retry-After"], h["retry-after-ms"], h["x-ratelimit-remaining-requests"]) == (
        "7", "7000", "0")
    assert (h["x-should-retry"], h["X-Upstream-Request-ID"]) == ("true", "req_up_1")
    assert "Set-Cookie" not in h and "openai-processing-ms" not in h
    assert h.get("Server") != "cloudflare"


def test_anthropic_headers_pass_through_on_success(client, mocked):
    mocked.post(service_url("anthropic_claude"), json={"id": "msg"}, headers={
        "anthropic-ratelimit-requests-remaining": "49", "request-id": "req_011",
        "Set-Cookie": "__cf_bm=abc"})
    response = post(client, service="anthropic_claude")
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "49"
    assert response.headers["X-Upstream-Request-ID"] == "req_011"
    assert "Set-Cookie" not in response.headers


def test_a_repeated_provider_header_is_passed_once_with_its_values_joined(client, mocked):
    mocked.post(URL, json={}, headers=[("x-ratelimit-limit-requests", "60"),
                                       ("X-RateLimit-Limit-Requests", "1000")])
    response = post(client)
    assert response.headers.getlist("x-ratelimit-limit-requests") == ["60, 1000"]


@pytest.mark.parametrize(("value", "passed"), [
    ("60\r\n per minute", "60 per minute"),  # a folded line, as the e-mail parser leaves it
    ("60\r\n\t\tper minute", "60 per minute"),
    ("a\rb", "a b"), ("a\nb", "a b"), ("a\x00b", "a b"), ("a\x1fb\x7f", "a b"),
    ("a\x01\x02 \tb", "a b"),
    ("a\tb", "a\tb"), ("caf\xe9", "caf\xe9"), ("\x85", "\x85"),  # allowed as they are
])
def test_passed_header_values_lose_their_control_characters(value, passed):
    assert passed_headers({"x-ratelimit-note": value, "x-request-id": value},
                          ("x-request-id",)) == {
        "x-ratelimit-note": passed, "X-Upstream-Request-ID": passed}


@pytest.mark.parametrize("name", ["x-ratelimit-reset(tokens)", "x-ratelimit-a b",
                                  "anthropic-ratelimit-x/y", 'x-ratelimit-"q"'])
def test_a_passed_header_whose_name_is_no_token_is_dropped(name):
    assert passed_headers({name: "1", "x-ratelimit-ok_1.a~": "2"}, ()) == {
        "x-ratelimit-ok_1.a~": "2"}


def test_provider_cookies_are_never_sent_back(client, mocked):
    mocked.post(URL, json={}, headers={"Set-Cookie": "session=abc; Path=/"})
    mocked.post(URL, json={})
    post(client)
    post(client)
    assert "Cookie" not in mocked.calls[1].request.headers


def test_pools_spell_out_their_size_and_retries():
    upstream = Upstream(make_settings(upstream_retries=3, upstream_pool_size=5))
    for session in upstream._sessions.values():
        adapter = session.get_adapter("https://api.openai.com/")
        assert adapter._pool_maxsize == 5
        retry = adapter.max_retries
        assert (retry.connect, retry.read, retry.redirect, retry.status) == (3, False, False, 0)
    upstream.close()


def test_a_service_finds_its_pool_once_and_a_new_one_after_close():
    upstream = Upstream(make_settings())
    request = requests.Request("POST", URL).prepare()
    adapter = upstream._sessions["openai"].get_adapter(URL)
    pool = adapter.get_connection_with_tls_context(request, True)
    assert adapter.get_connection_with_tls_context(request, True) is pool
    assert (pool.scheme, pool.host, pool.port) == ("http", "127.0.0.1", 9)
    # The pool's connections are ours (liveness check, header parsing), TLS ones too.
    assert pool.ConnectionCls is LeanHTTPConnection
    assert pool.ConnectionCls.response_class is LeanResponse
    tls = adapter.get_connection_with_tls_context(
        requests.Request("POST", "https://127.0.0.1:9/v1").prepare(), True)
    assert tls.ConnectionCls is LeanHTTPSConnection
    assert adapter.request_url(request, None) == "/v1/chat/completions"
    upstream.close()
    assert pool.pool is None  # its connections were closed
    reopened = adapter.get_connection_with_tls_context(request, True)
    assert reopened is not pool and reopened.pool is not None
    upstream.close()


@pytest.mark.parametrize("key", [":", "ok", "true", "a-b-c"])
def test_a_key_too_short_to_be_real_leaves_the_answer_whole(client, mocked, key):
    """Found by schemathesis: the key ":" masked in {"ok": true} made it invalid JSON (a 502)."""
    mocked.post(URL, json={"ok": True, "id": "a-b-c"})
    response = post(client, api_key=key)
    assert response.status_code == 200
    assert response.get_json()["data"] == {"ok": True, "id": "a-b-c"}


def test_a_key_echoed_by_the_provider_is_masked(client, mocked):
    mocked.post(URL, status=401, json={"error": {"message": f"Incorrect API key {FAKE_KEY}"}})
    response = post(client)
    assert response.get_json()["error"]["details"]["error"]["message"] == (
        "Incorrect API key [REDACTED]")


@pytest.mark.parametrize("status", [200, 429])
def test_a_key_echoed_in_a_passed_header_is_masked(client, mocked, status):
    mocked.post(URL, status=status, json={}, headers={
        "x-request-id": f"req-{FAKE_KEY}", "x-ratelimit-note": f"{FAKE_KEY} {FAKE_KEY}"})
    response = post(client)  # the client sweeps its headers too
    assert response.headers["X-Upstream-Request-ID"] == "req-[REDACTED]"
    assert response.headers["x-ratelimit-note"] == "[REDACTED] [REDACTED]"


def test_a_key_echoed_in_a_stream_is_masked(client, mocked):
    sse = f'data: {{"delta": "{FAKE_KEY}"}}\n\ndata: [DONE]\n\n'.encode()
    mocked.post(URL, body=sse, content_type="text/event-stream")
    response = post(client, payload={"model": "m", "stream": True})  # the client sweeps it too
    assert response.data == b'data: {"delta": "[REDACTED]"}\n\ndata: [DONE]\n\n'


def relaying(chunks: Iterable[bytes], api_key: str = FAKE_KEY,
             log: RequestLog | None = None) -> Iterator[bytes]:
    """Upstream._relay over a provider stream that arrives in these chunks."""
    raw = types.SimpleNamespace(chunked=True, read_chunked=lambda decode_content: iter(chunks))
    response = types.SimpleNamespace(raw=raw, close=lambda: None)
    return Upstream._relay(response, SERVICES["openai_chat"], _maskable(api_key),
                           log or RequestLog("r", "POST", "/"))


def relay(chunks: list[bytes], api_key: str = FAKE_KEY) -> list[bytes]:
    return list(relaying(chunks, api_key))


STREAM = f'data: {{"a": "{FAKE_KEY}"}}\n\ndata: {{"b": "{FAKE_KEY[:9]}"}}\n\n'.encode()


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_a_key_split_across_stream_chunks_is_masked_and_only_its_start_waits(cut):
    key = FAKE_KEY.encode()
    sent = relay([STREAM[:cut], STREAM[cut:]])
    assert b"".join(sent) == STREAM.replace(key, b"[REDACTED]")
    # What waits for the next chunk: the longest end of the first chunk that starts the key.
    # So a whole event (it ends in a blank line) never waits.
    first = STREAM[:cut].replace(key, b"[REDACTED]")
    waits = max(n for n in range(len(key)) if first.endswith(key[:n]))
    assert sent[0] == first[:len(first) - waits]


def test_a_stream_in_single_bytes_comes_out_whole_and_masked():
    sent = relay([STREAM[i:i + 1] for i in range(len(STREAM))])
    assert b"".join(sent) == STREAM.replace(FAKE_KEY.encode(), b"[REDACTED]")


def test_a_stream_that_ends_on_the_start_of_a_key_sends_it_at_the_end():
    assert relay([b"data: ", b"sk-te"]) == [b"data: ", b"sk-te"]
    assert relay([b"data: sk-te"]) == [b"data: ", b"sk-te"]


def test_a_stream_that_breaks_on_the_start_of_a_key_sends_it_before_the_error():
    def chunks():
        yield b"data: sk-te"
        raise urllib3.exceptions.ProtocolError("reset")

    log = RequestLog("r", "POST", "/")
    sent = relaying(chunks(), log=log)
    assert next(sent) == b"data: "
    assert next(sent) == b"sk-te"
    with pytest.raises(NetworkError):
        next(sent)
    assert log.ended == "upstream_error"


def test_a_key_too_short_to_be_real_is_not_held_back_in_a_stream():
    assert relay([b"data: o", b"k\n\n"], api_key="ok") == [b"data: o", b"k\n\n"]


@pytest.mark.parametrize("extra", [{}, {"seed": 2 ** 70}])  # past 64 bits too
def test_payload_is_sent_as_compact_utf8_json(client, mocked, extra):
    mocked.post(URL, json={})
    payload = {"model": "m", "temperature": 1e-05, "text": "é", "n": [1, {"a": None}], **extra}
    post(client, payload=payload)
    sent = mocked.calls[0].request.body
    assert json.loads(sent) == payload
    assert b" " not in sent and "é".encode() in sent
    assert mocked.calls[0].request.headers["Content-Length"] == str(len(sent))


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if not s.streams
                                  and n != "cohere_generate"])
def test_stream_flag_on_a_service_that_does_not_stream_gets_a_plain_answer(client, mocked, name):
    mocked.post(service_url(name), json={"object": "list"})
    response = post(client, service=name, payload={"model": "m", "input": "x", "stream": True})
    assert response.get_json()["data"] == {"object": "list"}
    assert mocked.calls[0].request.headers["Accept"] == "application/json"


def test_a_chat_answer_only_scanning_as_json_cannot_be_translated(client, mocked):
    """A number past a double's range is valid JSON to relay, but no value to translate."""
    mocked.post(service_url("cohere_generate"), status=200,
                body=b'{"id": "c1", "message": {"content": []}, "usage": {"n": 1e400}}')
    response = post(client, service="cohere_generate", payload={"prompt": "hi"})
    assert response.status_code == 502
    assert response.get_json()["error"]["message"] == (
        "cohere_generate: chat answered in an unexpected shape")


# Gemini's model in the path (providers.md): a whole-string match, or nothing leaves.
HOSTILE_MODELS = [
    "../x", "models/../x", "a/b", "models/a/b", "tunedModels/a/b", "x?alt=json", "x#frag",
    "%2e%2e", "gemini%2f", "gemini 2", " gemini", "gemini\n", "gemini\r\n", "gemini\t",
    "Gemini-2.5", "GEMINI", "gemini..flash", "models/gemini..x", "gemini-", "-gemini", ".gemini",
    "gemini.", "gеmini",  # a Cyrillic е
    "ｇemini",  # fullwidth
    "gemini\u200b", "a" * 129, "models/" + "a" * 129, "tunedModels/" + "a" * 41,
    "tunedModels/1abc", "tunedModels/a.b", "models/", "tunedModels/", "", "models//x", "/models/x",
    "v1beta/models/x", "x:generateContent", "cachedContents/x", None, 42, ["gemini"],
    {"name": "gemini"}, True,
]


@pytest.mark.parametrize("service", ["gemini_generate", "gemini_embedding", "gemini_count_tokens"])
@pytest.mark.parametrize("model", HOSTILE_MODELS, ids=repr)
def test_a_hostile_gemini_model_is_refused_before_any_byte_leaves(client, mocked, service, model):
    response = post(client, service=service, payload={"model": model, "contents": []})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and error["service"] == service
    assert list(error["details"]["payload"]) == ["model"]
    assert not mocked.calls


def test_a_missing_gemini_model_is_refused_before_the_missing_key(client, mocked):
    response = client.post("/api/proxy/external", json={
        "target_service": "gemini_generate", "payload": {"contents": []}})
    assert response.get_json()["error"]["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize(("model", "path_name"), [
    ("gemini-2.5-flash", "models/gemini-2.5-flash"),
    ("models/gemini-2.5-flash", "models/gemini-2.5-flash"),
    ("gemini-embedding-001", "models/gemini-embedding-001"),
    ("a", "models/a"), ("a" * 128, "models/" + "a" * 128),
    ("tunedModels/my-model-1", "tunedModels/my-model-1"),
])
def test_a_gemini_model_goes_into_the_path_and_out_of_the_body(client, mocked, model, path_name):
    mocked.post(service_url("gemini_count_tokens", path_name), json={"totalTokens": 3})
    payload = {"model": model, "contents": [{"parts": [{"text": "hi"}]}], "stream": True}
    response = post(client, service="gemini_count_tokens", payload=payload)
    assert response.get_json()["data"] == {"totalTokens": 3}
    # Only gemini_generate takes `stream` as its switch; elsewhere it is the client's to send.
    assert json.loads(mocked.calls[0].request.body) == {
        "contents": [{"parts": [{"text": "hi"}]}], "stream": True}


def test_a_gemini_batch_keeps_each_requests_own_model(client, mocked):
    mocked.post(service_url("gemini_embedding", "models/gemini-embedding-001"), json={})
    inner = [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "x"}]}}]
    post(client, service="gemini_embedding",
         payload={"model": "gemini-embedding-001", "requests": inner})
    assert json.loads(mocked.calls[0].request.body) == {"requests": inner}


@pytest.mark.parametrize("stream", [True, False, None])
def test_gemini_generate_stream_picks_the_path_and_is_not_sent(client, mocked, stream):
    streamed = stream is True
    url = service_url("gemini_generate", "models/gemini-2.5-flash", stream=streamed)
    if streamed:
        mocked.post(url, body=b'data: {"candidates": []}\r\n\r\n',
                    content_type="text/event-stream")
    else:
        mocked.post(url, json={"candidates": []})
    payload = {"model": "gemini-2.5-flash", "contents": []}
    if stream is not None:
        payload["stream"] = stream
    response = post(client, service="gemini_generate", payload=payload)
    assert response.status_code == 200
    sent = mocked.calls[0].request
    assert sent.url == url and json.loads(sent.body) == {"contents": []}
    assert sent.headers["Accept"] == ("text/event-stream" if streamed else "application/json")
    assert sent.headers["x-goog-api-key"] == FAKE_KEY and "key=" not in sent.url
    if streamed:
        assert response.get_data() == b'data: {"candidates": []}\r\n\r\n'


def test_the_log_line_names_the_gemini_url_without_its_query(client, mocked, caplog):
    url = service_url("gemini_generate", "models/g", stream=True)
    mocked.post(url, body=b"data: {}\r\n\r\n", content_type="text/event-stream")
    post(client, service="gemini_generate", payload={"model": "g", "stream": True})
    line = next(r for r in caplog.records if r.name == "proxy.requests")
    assert line.fields["url"] == url.partition("?")[0] and "?" in url


def test_model_paths_share_one_pool_per_provider():
    upstream = Upstream(make_settings())
    adapter = upstream._sessions["google"].get_adapter(service_url("gemini_generate"))
    pools = {id(adapter.get_connection_with_tls_context(
        requests.Request("POST", service_url("gemini_generate", f"models/m{i}")).prepare(), True))
        for i in range(50)}
    assert len(pools) == 1
    upstream.close()


GEMINI_429 = {"error": {"code": 429, "message": "Resource exhausted", "status":
                        "RESOURCE_EXHAUSTED", "details": [
                            {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
                            {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                             "retryDelay": "34.4s"}]}}


def test_gemini_429_gets_retry_after_from_its_retry_info(client, mocked):
    mocked.post(service_url("gemini_generate", "models/g"), status=429, json=GEMINI_429)
    response = post(client, service="gemini_generate", payload={"model": "g"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "35"
    assert response.get_json()["error"]["details"] == GEMINI_429


def test_a_providers_own_retry_after_header_is_kept(client, mocked):
    mocked.post(service_url("gemini_generate", "models/g"), status=429, json=GEMINI_429,
                headers={"retry-after": "3"})
    response = post(client, service="gemini_generate", payload={"model": "g"})
    assert response.headers.getlist("Retry-After") == ["3"]


@pytest.mark.parametrize("raw", ["", "not json", "[]", '{"error": 1}',
                                 '{"error": {"details": [{"@type": '
                                 '"type.googleapis.com/google.rpc.RetryInfo", "retryDelay": 5}]}}'])
def test_a_gemini_error_without_a_usable_retry_info_is_passed_as_it_is(client, mocked, raw):
    mocked.post(service_url("gemini_generate", "models/g"), status=429, body=raw)
    response = post(client, service="gemini_generate", payload={"model": "g"})
    assert response.status_code == 429 and "Retry-After" not in response.headers


def test_retry_info_is_read_only_for_the_provider_that_sends_it(client, mocked):
    mocked.post(URL, status=429, json=GEMINI_429)
    assert "Retry-After" not in post(client).headers


@pytest.mark.parametrize("raw", ['\n\n\n{"id": "c1"}', '\r\n \t{"id": "c1"}\n'])
def test_a_plain_answer_after_deepseeks_blank_lines_is_spliced_as_it_is(client, mocked, raw):
    mocked.post(service_url("deepseek_chat"), body=raw, content_type="application/json")
    response = post(client, service="deepseek_chat")
    assert response.status_code == 200
    assert response.get_data().startswith(b'{"success":true,"data":' + raw.encode() + b",")


def test_a_deepseek_answer_of_only_blank_lines_is_a_502(client, mocked):
    mocked.post(service_url("deepseek_chat"), body="\n\n\n\n", content_type="application/json")
    response = post(client, service="deepseek_chat")
    assert response.status_code == 502
    assert response.get_json()["error"]["upstreamStatus"] == 200
