import io
import json
import logging
import re

import pytest

from app import create_app
from config import SERVICES, VERSION
from tests.conftest import FAKE_KEY
from tests.unit.conftest import body, make_settings, service_url

EXTERNAL = "/api/proxy/external"
RID = re.compile(r"req_\d{13}_[a-z0-9]{6}")
GOOD = json.dumps(body()).encode()


def raw_post(client, data, content_type="application/json", **kwargs):
    return client.post(EXTERNAL, data=data, content_type=content_type, **kwargs)


def test_health_answers_without_calling_a_provider(client, mocked):
    response = client.get("/api/proxy/health")
    assert response.status_code == 200
    payload = response.get_json()
    assert payload["success"] is True
    data = payload["data"]
    assert data["status"] == "healthy" and data["services"] == len(SERVICES) == 23
    assert (data["version"], data["environment"]) == (VERSION, "development")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["timestamp"])
    assert payload["requestId"] == response.headers["X-Request-ID"]
    assert RID.fullmatch(payload["requestId"])


def test_services_lists_every_name_with_its_catalog_entry(client):
    data = client.get("/api/proxy/services").get_json()["data"]
    assert (data["services"], data["count"]) == (sorted(SERVICES), 23)
    assert [entry["name"] for entry in data["catalog"]] == data["services"]
    for entry in data["catalog"]:
        service = SERVICES[entry["name"]]
        assert entry == {"name": service.name, "provider": service.provider,
                         "kind": service.kind, "streams": service.streams}
    assert {e["kind"] for e in data["catalog"]} == {"chat", "completion", "embedding", "rerank",
                                                    "tokens"}


def test_each_request_gets_a_new_id(client):
    ids = {client.get("/api/proxy/health").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("incoming", ["abc-123", "a" * 128, "9f2c.x:y_z-1"])
def test_valid_incoming_request_id_is_honoured(client, incoming):
    response = client.get("/api/proxy/health", headers={"X-Request-ID": incoming})
    assert response.headers["X-Request-ID"] == incoming
    assert response.get_json()["requestId"] == incoming


@pytest.mark.parametrize("incoming", ["", "a" * 129, "has space", "semi;colon", "é"])
def test_invalid_incoming_request_id_is_replaced(client, incoming):
    response = client.get("/api/proxy/health", headers={"X-Request-ID": incoming})
    assert RID.fullmatch(response.headers["X-Request-ID"])


# Every bad-input case of the contract: its envelope, its status, and no provider call
# (`mocked` fails the test on any request it did not expect).
BAD_INPUT = [
    ("not json", b"hello", 400, "VALIDATION_ERROR"),
    ("truncated", GOOD[:-3], 400, "VALIDATION_ERROR"),
    ("empty", b"", 400, "VALIDATION_ERROR"),
    ("not utf-8", b'{"target_service": "\xff\xfe"}', 400, "VALIDATION_ERROR"),
    ("utf-8 bom", b"\xef\xbb\xbf" + GOOD, 400, "VALIDATION_ERROR"),
    ("array", b"[1, 2]", 400, "VALIDATION_ERROR"),
    ("string", b'"text"', 400, "VALIDATION_ERROR"),
    ("null", b"null", 400, "VALIDATION_ERROR"),
    ("NaN", GOOD.replace(b'"model": "m"', b'"model": NaN'), 400, "VALIDATION_ERROR"),
    ("Infinity", GOOD.replace(b'"model": "m"', b'"t": -Infinity'), 400, "VALIDATION_ERROR"),
    ("overflowing float", GOOD.replace(b'"model": "m"', b'"t": 1e999'), 400, "VALIDATION_ERROR"),
    ("huge int", GOOD.replace(b'"model": "m"', b'"t": ' + b"9" * 5000), 400, "VALIDATION_ERROR"),
    ("deep nesting", b'{"payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
     "VALIDATION_ERROR"),
    ("unknown service", json.dumps(body("gpt")).encode(), 400, "VALIDATION_ERROR"),
    ("payload missing", json.dumps({"target_service": "openai_chat", "api_key": "k"}).encode(),
     400, "VALIDATION_ERROR"),
    ("payload list", json.dumps(body(payload=[])).encode(), 400, "VALIDATION_ERROR"),
    ("unknown field", json.dumps(body(extra=1)).encode(), 400, "VALIDATION_ERROR"),
    ("key not a string", json.dumps({**body(), "api_key": 5}).encode(), 400, "VALIDATION_ERROR"),
    ("key too long", json.dumps({**body(), "api_key": "k" * 4097}).encode(), 400,
     "VALIDATION_ERROR"),
    ("key control char", json.dumps({**body(), "api_key": FAKE_KEY + "\n"}).encode(), 400,
     "VALIDATION_ERROR"),
    ("key absent", json.dumps({"target_service": "openai_chat", "payload": {}}).encode(), 400,
     "MISSING_API_KEY"),
    ("key null", json.dumps({**body(), "api_key": None}).encode(), 400, "MISSING_API_KEY"),
    ("key empty", json.dumps({**body(), "api_key": ""}).encode(), 400, "MISSING_API_KEY"),
    ("key blank", json.dumps({**body(), "api_key": "  \t "}).encode(), 400, "MISSING_API_KEY"),
    ("generate without prompt", json.dumps(body("cohere_generate", {"max_tokens": 5})).encode(),
     400, "VALIDATION_ERROR"),
    ("generate logit_bias", json.dumps(body("cohere_generate", {"prompt": "x", "logit_bias": {}})
                                       ).encode(), 400, "VALIDATION_ERROR"),
]


@pytest.mark.parametrize(("data", "status", "code"), [c[1:] for c in BAD_INPUT],
                         ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_its_envelope_and_reaches_no_provider(client, mocked, data, status, code):
    response = raw_post(client, data)
    assert response.status_code == status
    payload = response.get_json()
    assert payload["success"] is False and payload["error"]["code"] == code
    assert payload["requestId"] == response.headers["X-Request-ID"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_validation_details_name_each_field(client):
    response = client.post(EXTERNAL, json={"target_service": "x", "payload": [], "api_key": 1})
    assert response.get_json()["error"]["details"] == {
        "target_service": ["Unknown service; GET /api/proxy/services lists them."],
        "payload": ["Must be a JSON object."], "api_key": ["Not a valid string."]}


def test_missing_key_is_only_reported_once_the_rest_is_valid(client):
    response = client.post(EXTERNAL, json={"target_service": "x", "payload": {}})
    assert response.get_json()["error"]["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_wrong_content_type_is_a_validation_error(client, mocked, content_type):
    response = raw_post(client, GOOD, content_type=content_type)
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == "Content-Type must be application/json."


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON",
                                          " application/json ;charset=UTF-8"])
def test_json_content_type_with_charset_is_accepted(client, mocked, content_type):
    mocked.post(service_url("openai_chat"), json={"ok": True})
    assert raw_post(client, GOOD, content_type).status_code == 200


def test_body_over_the_limit_is_413(mocked):
    app = create_app(make_settings(max_request_bytes=1000))
    response = app.test_client().post(EXTERNAL, json=body(payload={"input": "x" * 2000}))
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_chunked_body_over_the_limit_is_413_not_cut_short(mocked):
    # No Content-Length, as with Transfer-Encoding: chunked; the server marks the input ended.
    app = create_app(make_settings(max_request_bytes=1000))
    data = json.dumps(body(payload={"input": "x" * 2000})).encode()
    response = app.test_client().post(
        EXTERNAL, input_stream=io.BytesIO(data), content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


class _ClientSocket:
    """gunicorn's client socket, as far as the body's stall limit uses it."""

    def __init__(self) -> None:
        self.timeout, self.set = None, []

    def gettimeout(self) -> float | None:
        return self.timeout

    def settimeout(self, seconds: float | None) -> None:
        self.timeout = seconds
        self.set.append(seconds)


class _StallingInput(io.BytesIO):
    """A request body whose client stops sending after its first bytes."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if not data:
            raise TimeoutError("timed out")  # what the socket raises at its timeout
        return data


@pytest.mark.parametrize("stalls", [False, True])
def test_the_body_is_read_under_the_stall_limit_and_the_socket_is_left_as_it_was(mocked,
                                                                               stalls):
    app = create_app(make_settings(client_body_timeout=7))
    if not stalls:
        mocked.post(service_url("openai_chat"), json={})
    sock = _ClientSocket()
    # gunicorn marks its input as ending where the body ends, as here.
    response = app.test_client().post(
        EXTERNAL, input_stream=_StallingInput(GOOD[:10]) if stalls else io.BytesIO(GOOD),
        content_type="application/json", content_length=len(GOOD),
        environ_overrides={"gunicorn.socket": sock, "wsgi.input_terminated": True})
    assert sock.set == [7, None]
    if stalls:
        assert response.status_code == 400
        assert response.get_json()["error"] == {
            "code": "VALIDATION_ERROR",
            "message": "The request body stopped arriving: nothing came for 7 s."}
        assert len(mocked.calls) == 0
    else:
        assert response.status_code == 200


def test_body_at_the_limit_is_accepted(mocked):
    data = json.dumps(body(payload={"input": "x"})).encode()
    app = create_app(make_settings(max_request_bytes=len(data)))
    mocked.post(service_url("openai_chat"), json={})
    assert app.test_client().post(EXTERNAL, data=data,
                                  content_type="application/json").status_code == 200


@pytest.mark.parametrize(("header", "value"), [
    ("OpenAI-Organization", "org\u00e9"), ("OpenAI-Project", "p" * 257)])
def test_bad_option_header_value_is_a_validation_error(client, mocked, header, value):
    response = client.post(EXTERNAL, json=body(), headers={header: value})
    assert response.status_code == 400
    assert list(response.get_json()["error"]["details"]["headers"]) == [header]


def test_success_envelope(client, mocked):
    mocked.post(service_url("openai_chat"), json={"choices": []})
    payload = client.post(EXTERNAL, json=body()).get_json()
    assert payload["success"] is True and payload["data"] == {"choices": []}


def test_one_summary_line_per_proxied_request(client, mocked, caplog):
    mocked.post(service_url("openai_chat"), status=429, json={"error": {"message": "slow down"}})
    client.post(EXTERNAL, json=body(payload={"model": "m", "messages": [{"content": "SECRET"}]}),
                headers={"X-Request-ID": "rid-1"})
    [record] = [r for r in caplog.records if r.name == "proxy.requests"]
    assert record.fields == {
        "requestId": "rid-1", "method": "POST", "path": EXTERNAL, "targetService": "openai_chat",
        "url": service_url("openai_chat"), "payloadKeys": ["messages", "model"],
        "status": 429, "upstreamStatus": 429, "errorCode": "EXTERNAL_SERVICE_ERROR",
        "durationMs": record.fields["durationMs"], "upstreamMs": record.fields["upstreamMs"],
        "stream": False, "model": "m"}
    assert 0 <= record.fields["upstreamMs"] <= record.fields["durationMs"]
    assert "SECRET" not in caplog.text


def test_rejected_request_still_logs_its_line(client, caplog):
    client.post(EXTERNAL, json={"target_service": "nope", "payload": {}})
    [record] = [r for r in caplog.records if r.name == "proxy.requests"]
    assert record.getMessage() == "request"
    assert (record.fields["path"], record.fields["status"]) == (EXTERNAL, 400)
    assert "targetService" not in record.fields


@pytest.mark.parametrize(("method", "path", "status"), [
    ("get", "/api/proxy/health", 200), ("get", "/nowhere?token=secret", 404),
    ("delete", "/api/proxy/services", 405)])
def test_every_route_logs_one_line_without_its_query(client, caplog, method, path, status):
    getattr(client, method)(path, headers={"X-Request-ID": "rid-any"})
    [record] = [r for r in caplog.records if r.name == "proxy.requests"]
    expected = {"requestId": "rid-any", "method": method.upper(), "path": path.split("?")[0],
                "status": status, "durationMs": record.fields["durationMs"]}
    if status >= 400:
        expected["errorCode"] = "NOT_FOUND" if status == 404 else "METHOD_NOT_ALLOWED"
    assert record.fields == expected


def test_cohere_generate_is_carried_out_by_chat(client, mocked):
    mocked.post(service_url("cohere_generate"), json={
        "id": "c-1", "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "Hi"},
                                                     {"type": "text", "text": " there"}]},
        "usage": {"billed_units": {"input_tokens": 2, "output_tokens": 3}, "tokens": {}}})
    response = client.post(EXTERNAL, json=body("cohere_generate", {
        "prompt": "Say hi", "max_tokens": 50, "temperature": 0.3, "stop_sequences": ["\n"],
        "num_generations": 1, "return_likelihoods": "NONE", "stream": False}))
    assert response.status_code == 200
    assert response.get_json()["data"] == {
        "id": "c-1", "prompt": "Say hi",
        "generations": [{"id": "c-1", "text": "Hi there", "finish_reason": "COMPLETE"}],
        "meta": {"billed_units": {"input_tokens": 2, "output_tokens": 3}}}
    assert json.loads(mocked.calls[0].request.body) == {
        "model": "command-a-03-2025", "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 50, "temperature": 0.3, "stop_sequences": ["\n"]}


def test_cohere_generate_model_comes_from_the_payload_or_the_setting(mocked):
    app = create_app(make_settings(cohere_generate_model="command-r7b-12-2024"))
    mocked.post(service_url("cohere_generate"), json={"id": "x", "message": {"content": []}})
    mocked.post(service_url("cohere_generate"), json={"id": "y", "message": {"content": []}})
    client = app.test_client()
    client.post(EXTERNAL, json=body("cohere_generate", {"prompt": "a"}))
    client.post(EXTERNAL, json=body("cohere_generate", {"prompt": "a", "model": "command-a"}))
    assert [json.loads(c.request.body)["model"] for c in mocked.calls] == [
        "command-r7b-12-2024", "command-a"]


def test_cohere_generate_errors_pass_through(client, mocked):
    mocked.post(service_url("cohere_generate"), status=429, json={"id": "e", "message": "limit"})
    response = client.post(EXTERNAL, json=body("cohere_generate", {"prompt": "a"}))
    assert response.status_code == 429
    assert response.get_json()["error"]["details"] == {"id": "e", "message": "limit"}


def test_cohere_generate_unexpected_chat_shape_is_502(client, mocked):
    mocked.post(service_url("cohere_generate"), json={"unexpected": True})
    response = client.post(EXTERNAL, json=body("cohere_generate", {"prompt": "a"}))
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "EXTERNAL_SERVICE_ERROR"


# Media types are case-insensitive (RFC 9110 §8.3.1) and may carry parameters.
@pytest.mark.parametrize("content_type", ["text/event-stream", "text/event-stream; charset=utf-8",
                                          "Text/Event-Stream;charset=UTF-8"])
def test_stream_relays_provider_bytes_with_stream_headers(client, mocked, content_type):
    sse = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n'
    mocked.post(service_url("openai_chat"), body=sse, content_type=content_type)
    response = client.post(EXTERNAL, json=body(payload={"model": "m", "stream": True}))
    assert response.status_code == 200
    assert response.data == sse
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert RID.fullmatch(response.headers["X-Request-ID"])
    assert mocked.calls[0].request.headers["Accept"] == "text/event-stream"


def test_stream_request_answered_with_json_gets_the_envelope(client, mocked):
    mocked.post(service_url("openai_chat"), json={"id": "x"})
    response = client.post(EXTERNAL, json=body(payload={"model": "m", "stream": True}))
    assert response.get_json() == {"success": True, "data": {"id": "x"},
                                   "requestId": response.headers["X-Request-ID"]}


def test_stream_error_status_before_first_byte_is_the_json_envelope(client, mocked):
    mocked.post(service_url("anthropic_claude"), status=429, json={"type": "error"},
                headers={"retry-after": "3"})
    response = client.post(EXTERNAL, json=body("anthropic_claude",
                                               {"model": "m", "stream": True}))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.get_json()["error"]["code"] == "EXTERNAL_SERVICE_ERROR"


def test_cors_preflight_for_json_post(mocked):
    app = create_app(make_settings(cors_origins=("https://app.example",)))
    response = app.test_client().options(EXTERNAL, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, anthropic-beta, openai-project"})
    assert 200 <= response.status_code < 300
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert {"content-type", "anthropic-beta", "openai-project"} <= set(allowed.split(", "))
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert "Origin" in response.headers["Vary"]


def test_cors_preflight_grants_only_the_headers_the_proxy_reads(mocked):
    app = create_app(make_settings(cors_origins=("https://app.example",)))
    response = app.test_client().options(EXTERNAL, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Content-Type,X-Custom, Cookie ,authorization"})
    assert response.headers["Access-Control-Allow-Headers"] == "Content-Type, authorization"


def test_cors_error_answers_are_readable_by_the_page_and_metrics_get_none(mocked):
    """A browser script must be able to read an error envelope; /metrics is not for browsers."""
    client = create_app(make_settings(cors_origins=("*",))).test_client()
    origin = {"Origin": "https://any.example"}
    for answer in (client.post(EXTERNAL, data="not json", headers=origin),
                   client.get("/api/nowhere", headers=origin)):
        assert answer.status_code in (400, 404)
        assert answer.headers["Access-Control-Allow-Origin"] == "https://any.example"
        assert answer.headers["Access-Control-Expose-Headers"] == "X-Request-ID"
    metrics = client.get("/metrics", headers=origin)
    assert not [h for h in metrics.headers.keys() if h.startswith("Access-Control-")]


@pytest.mark.parametrize("status", [200, 429])
def test_cors_exposes_exactly_the_headers_an_answer_passes_on(mocked, status):
    """A page must be able to read "12 requests left": every passed-on header is exposed by
    name (Access-Control-Expose-Headers has no wildcard for credentialed calls), and no other."""
    client = create_app(make_settings(cors_origins=("*",))).test_client()
    passed = {"x-ratelimit-remaining-requests": "12", "anthropic-ratelimit-tokens-limit": "9",
              "ratelimitbysize-remaining": "5", "x-ratelimitbysize-limit": "6",
              "retry-after": "1", "retry-after-ms": "900", "x-should-retry": "true"}
    mocked.post(service_url("openai_chat"), status=status, json={},
                headers={**passed, "x-request-id": "up-1", "Server": "x", "Set-Cookie": "a=b"})
    answer = client.post(EXTERNAL, json=body(), headers={"Origin": "https://any.example"})
    exposed = answer.headers["Access-Control-Expose-Headers"].split(", ")
    assert sorted(exposed) == sorted(["X-Request-ID", "X-Upstream-Request-ID", *passed])
    assert all(name in answer.headers for name in exposed)


def test_cors_headers_go_to_browsers_only(mocked):
    """Browsers always send Origin; other callers' answers carry no CORS headers."""
    client = create_app(make_settings(cors_origins=("*",))).test_client()
    mocked.post(service_url("openai_chat"), json={})
    plain = client.post(EXTERNAL, json=body())
    assert not [name for name in plain.headers.keys() if name.startswith("Access-Control-")]
    browser = client.get("/api/proxy/health", headers={"Origin": "https://any.example"})
    assert browser.headers["Access-Control-Allow-Origin"] == "https://any.example"
    assert "X-Request-ID" in browser.headers["Access-Control-Expose-Headers"]


def test_cors_other_origin_gets_no_allow_header(mocked):
    app = create_app(make_settings(cors_origins=("https://app.example",)))
    response = app.test_client().get("/api/proxy/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_no_cors_headers_when_origins_are_empty(client):
    response = client.get("/api/proxy/health", headers={"Origin": "https://app.example"})
    assert not [h for h in response.headers.keys() if h.lower().startswith("access-control")]
