import ipaddress
import json
import logging

import pytest

from app import create_app
from config import ConfigError, Settings
from proxy import logs
from proxy.access import client_address
from proxy.logs import JsonFormatter
from tests.conftest import ACCESS_TOKENS, FAKE_KEY
from tests.unit.conftest import Lines, body, make_settings, service_url

TOKENS = ACCESS_TOKENS


@pytest.fixture
def guarded():
    app = create_app(make_settings(proxy_access_tokens=TOKENS))
    return app.test_client()


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer wrong", "tok-alpha-1-NEVER-LOG",
    "Basic dG9rLWFscGhhLTEtTkVWRVItTE9H", "Bearer tok-alpha-1-NEVER-LOGx",
    "bearer tok-alpha-1-NEVER-LOG"])
def test_proxy_without_a_valid_token_is_401_and_reaches_no_provider(guarded, mocked,
                                                                     authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = guarded.post("/api/proxy/external", json=body(), headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "UNAUTHORIZED"
    assert response.headers["X-Request-ID"]


@pytest.mark.parametrize("token", TOKENS)
def test_each_configured_token_opens_the_proxy(guarded, mocked, token):
    mocked.post(service_url("openai_chat"), json={"ok": True})
    response = guarded.post("/api/proxy/external", json=body(),
                            headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    # The provider gets the user's key, never the client's access token.
    assert mocked.calls[0].request.headers["Authorization"] == f"Bearer {FAKE_KEY}"


def test_services_needs_a_token_and_health_does_not(guarded):
    assert guarded.get("/api/proxy/services").status_code == 401
    assert guarded.get("/api/proxy/services",
                       headers={"Authorization": "Bearer tok-beta-2-NEVER-LOG"}).status_code == 200
    assert guarded.get("/api/proxy/health").status_code == 200


def test_browser_preflight_needs_no_token():
    app = create_app(make_settings(proxy_access_tokens=TOKENS, cors_origins=("https://a.example",)))
    response = app.test_client().options("/api/proxy/external", headers={
        "Origin": "https://a.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://a.example"


def test_without_tokens_the_proxy_is_open(client, mocked):
    mocked.post(service_url("openai_chat"), json={})
    assert client.post("/api/proxy/external", json=body()).status_code == 200


def test_tokens_are_never_logged_or_printed(guarded, caplog):
    guarded.post("/api/proxy/external", json=body(),
                 headers={"Authorization": "Bearer tok-alpha-1-NEVER-LOG"})
    guarded.post("/api/proxy/external", json=body(), headers={"Authorization": "Bearer nope-3"})
    for secret in (*TOKENS, "nope-3"):
        assert secret not in caplog.text
    assert "tok-alpha-1-NEVER-LOG" not in repr(make_settings(proxy_access_tokens=TOKENS))


def test_access_tokens_setting():
    assert Settings.from_env({"PROXY_ACCESS_TOKENS": " a1, b2 ,,"}).proxy_access_tokens == (
        "a1", "b2")
    assert Settings.from_env({}).proxy_access_tokens == ()
    with pytest.raises(ConfigError, match="^PROXY_ACCESS_TOKENS must be") as caught:
        Settings.from_env({"PROXY_ACCESS_TOKENS": "ok,bad\u00e9secret"})
    assert "secret" not in str(caught.value)


# --- rate limiting (counters in memory here; tests/e2e/test_rate_limit.py runs Redis) ---

def limited_client(rate: str = "3/minute", **overrides):
    return create_app(make_settings(rate_limit=rate, **overrides)).test_client()


def test_a_caller_over_the_limit_gets_429_with_retry_after_and_no_provider_call(mocked):
    mocked.post(service_url("openai_chat"), json={"ok": True})
    client = limited_client()
    answers = [client.post("/api/proxy/external", json=body()) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert len(mocked.calls) == 3
    error = answers[3].get_json()["error"]
    assert error["code"] == "RATE_LIMITED"
    assert "3 per 1 minute" in error["message"]
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
    assert answers[3].headers["X-Request-ID"]


def test_limit_is_shared_by_the_guarded_routes_and_spares_health_and_preflight(mocked):
    mocked.post(service_url("openai_chat"), json={})
    client = limited_client("2/minute", cors_origins=("https://a.example",))
    for _ in range(5):
        assert client.get("/api/proxy/health").status_code == 200
        assert client.options("/api/proxy/external", headers={
            "Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
        ).status_code == 200
    assert client.get("/api/proxy/services").status_code == 200
    assert client.post("/api/proxy/external", json=body()).status_code == 200
    assert client.get("/api/proxy/services").status_code == 429
    assert client.get("/api/proxy/nowhere").status_code == 404  # routing errors are not counted


def test_each_address_has_its_own_count_and_a_forged_forwarded_for_changes_nothing(mocked):
    mocked.post(service_url("openai_chat"), json={})
    client = limited_client("1/minute")
    post = client.post

    def from_(address, **headers):
        return post("/api/proxy/external", json=body(), headers=headers,
                    environ_base={"REMOTE_ADDR": address}).status_code

    assert from_("192.0.2.1") == 200
    assert from_("192.0.2.1", **{"X-Forwarded-For": "203.0.113.9"}) == 429
    assert from_("192.0.2.2") == 200


def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(mocked):
    mocked.post(service_url("openai_chat"), json={})
    client = limited_client("1/minute", trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))

    def via_proxy(forwarded):
        return client.post("/api/proxy/external", json=body(),
                           headers={"X-Forwarded-For": forwarded},
                           environ_base={"REMOTE_ADDR": "10.1.1.1"}).status_code

    assert via_proxy("198.51.100.7") == 200
    assert via_proxy("198.51.100.8") == 200
    # The client's own claim left of the address our proxy appended is not believed.
    assert via_proxy("1.2.3.4, 198.51.100.7") == 429


@pytest.mark.parametrize(("remote", "forwarded", "expected"), [
    ("192.0.2.1", "", "192.0.2.1"),
    ("192.0.2.1", "203.0.113.9", "192.0.2.1"),                # peer not trusted: header ignored
    ("10.0.0.5", "", "10.0.0.5"),                             # trusted peer, no header
    ("10.0.0.5", "203.0.113.9", "203.0.113.9"),
    ("10.0.0.5", "6.6.6.6, 203.0.113.9", "203.0.113.9"),      # left of it: the client's claim
    ("10.0.0.5", "203.0.113.9, 10.0.0.7", "203.0.113.9"),     # two trusted hops
    ("10.0.0.5", "10.0.0.8, 10.0.0.7", "10.0.0.8"),           # all trusted: the leftmost
    ("10.0.0.5", "garbage", "garbage"),
    ("::1", "2001:db8::1", "2001:db8::1"),
])
def test_client_address(remote, forwarded, expected):
    trusted = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1"))
    assert client_address(remote, forwarded, trusted) == expected


def test_with_tokens_each_token_has_its_own_count_and_strangers_count_by_address(mocked):
    mocked.post(service_url("openai_chat"), json={})
    app = create_app(make_settings(rate_limit="1/minute", proxy_access_tokens=TOKENS))
    client = app.test_client()

    def post(authorization, address="192.0.2.1"):
        return client.post("/api/proxy/external", json=body(),
                           headers={"Authorization": authorization},
                           environ_base={"REMOTE_ADDR": address}).status_code

    assert post("Bearer tok-alpha-1-NEVER-LOG") == 200
    # A token's count follows the token, whatever the address.
    assert post("Bearer tok-alpha-1-NEVER-LOG", "192.0.2.99") == 429
    assert post("Bearer tok-beta-2-NEVER-LOG") == 200
    # Guessing tokens is limited too, per address, before the token is even checked.
    assert post("Bearer guess-1") == 401
    assert post("Bearer guess-2") == 429
    assert len(mocked.calls) == 2
    # The counters hold digests, never a token.
    counters = repr(app.extensions["limiter"].pop()._storage.storage)
    assert "token:" in counters and not any(t in counters for t in TOKENS)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, (None, "memory://", ())),
    ({"RATE_LIMIT": "60/minute", "RATE_LIMIT_STORAGE_URI": "redis://:pw@127.0.0.1:6379/0",
      "TRUSTED_PROXIES": "10.0.0.0/8, ::1"},
     ("60/minute", "redis://:pw@127.0.0.1:6379/0",
      (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1")))),
    ({"RATE_LIMIT": "10 per second;1000/day"}, ("10 per second;1000/day", "memory://", ())),
])
def test_rate_limit_settings(env, expected):
    s = Settings.from_env(env)
    assert (s.rate_limit, s.rate_limit_storage_uri, s.trusted_proxies) == expected
    assert "pw" not in repr(s)


@pytest.mark.parametrize(("name", "value"), [
    ("RATE_LIMIT", "0/minute"), ("RATE_LIMIT", "fast"), ("RATE_LIMIT", "60/fortnight"),
    ("RATE_LIMIT", "60/minute;"), ("RATE_LIMIT_STORAGE_URI", "mysql://u:secretpw@db"),
    ("RATE_LIMIT_STORAGE_URI", "redis"), ("TRUSTED_PROXIES", "10.0.0.1/8"),
    ("TRUSTED_PROXIES", "proxy.internal"),
])
def test_bad_rate_limit_settings_name_the_variable_and_never_a_password(name, value):
    with pytest.raises(ConfigError, match=f"^{name} must be") as caught:
        Settings.from_env({name: value})
    assert "secretpw" not in str(caught.value)


def test_a_library_printing_the_requests_key_or_token_is_masked(mocked):
    """Should any library ever log the current request's secrets verbatim, the line is masked."""
    chatty, printed = logging.getLogger("some.library"), Lines()
    chatty.addHandler(printed)

    def provider(request):
        chatty.warning("sending with %s and %s", key, ACCESS_TOKENS[0])
        chatty.warning("as JSON %s", json.dumps({"k": key}))
        return 200, {}, "{}"

    mocked.add_callback("POST", service_url("openai_chat"), callback=provider)
    client = create_app(make_settings(proxy_access_tokens=TOKENS)).test_client()
    for key in (FAKE_KEY, FAKE_KEY + '"\\x'):  # a quote and a backslash: escaped in JSON lines
        assert client.post("/api/proxy/external", json=body(api_key=key),
                           headers={"Authorization": f"Bearer {TOKENS[0]}"}).status_code == 200
    chatty.removeHandler(printed)
    lines = printed.lines
    assert len(lines) == 4
    assert all(line.count("[REDACTED]") >= 1 and FAKE_KEY not in line for line in lines), lines
    assert not any(ACCESS_TOKENS[0] in line for line in lines)


def test_the_mask_ends_with_the_request(mocked):
    """A request's secrets are masked while it is served, and forgotten when the next begins
    (else every thread would mask, and keep, every key it ever saw)."""
    other = "sk-other-key-12345678"  # not one of the swept secrets: this test prints it
    mocked.post(service_url("openai_chat"), json={})
    client = create_app(make_settings()).test_client()
    client.post("/api/proxy/external", json=body(api_key=other))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "word %s", (other,), None)
    assert other not in JsonFormatter().format(record)  # still this request's context
    client.get("/api/proxy/health")  # the next request on this thread
    assert other in JsonFormatter().format(record)


@pytest.mark.parametrize("line", [
    "Authorization: Bearer abc.def-123", "authorization: BEARER abc.def-123",
    "x-api-key: abc.def-123", "X-Api-Key='abc.def-123'", '{"api_key": "abc.def-123"}',
    "API_KEY=abc.def-123",
])
def test_credential_shapes_are_masked_whoever_prints_them(line):
    """The last line of defence catches a credential no request registered, in any case."""
    masked = logs.redact(line)
    assert "abc.def-123" not in masked and "[REDACTED]" in masked


def test_lines_without_a_credential_shape_are_left_alone():
    line = '{"message": "proxied request", "payloadKeys": ["model", "input"], "bear": 1}'
    assert logs.redact(line) == line


@pytest.mark.parametrize("message, fields", [
    ("proxied request", {"status": 200, "payloadKeys": ["model"], "note": "ünïcode"}),
    ("a lone \ud800 surrogate", {}),  # the fast encoder refuses it: the stdlib writes the line
    ("a big number", {"n": 2 ** 70}),
    ("not JSON by nature", {"at": ipaddress.ip_address("::1")}),  # written as its str()
])
def test_every_record_is_one_json_line(message, fields):
    record = logging.LogRecord("x", logging.INFO, __file__, 1, message, (), None)
    record.fields = fields
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == message and parsed["level"] == "info"
    assert {k: parsed[k] for k in fields} == json.loads(json.dumps(fields, default=str))
