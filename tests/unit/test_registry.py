import pytest

from config import PROVIDERS, SERVICES, USER_AGENT
from config.registry import KINDS
from tests.conftest import FAKE_KEY
from tests.unit.conftest import body, service_url

SEED_SERVICES = {"openai_chat", "openai_embedding", "anthropic_claude", "jina_embedding",
                 "cohere_generate", "cohere_embed"}
# providers.md, Part 2: the services an AI coding assistant calls, with their kinds.
NEW_SERVICES = {
    "gemini_generate": "chat", "gemini_embedding": "embedding", "gemini_count_tokens": "tokens",
    "mistral_chat": "chat", "mistral_fim": "completion", "mistral_embedding": "embedding",
    "deepseek_chat": "chat", "deepseek_fim": "completion", "openrouter_chat": "chat",
    "groq_chat": "chat", "voyage_embedding": "embedding", "voyage_rerank": "rerank",
    "cohere_rerank": "rerank", "jina_rerank": "rerank", "anthropic_count_tokens": "tokens"}
SEED_KINDS = {"openai_chat": "chat", "openai_responses": "chat", "anthropic_claude": "chat",
              "cohere_chat": "chat", "cohere_generate": "completion"}
# providers.md: the URL of each provider's services, from its default base URL.
UPSTREAM_URLS = {
    "gemini_generate": "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent",
    "gemini_embedding":
        "https://generativelanguage.googleapis.com/v1beta/models/m:batchEmbedContents",
    "gemini_count_tokens":
        "https://generativelanguage.googleapis.com/v1beta/models/m:countTokens",
    "mistral_chat": "https://api.mistral.ai/v1/chat/completions",
    "mistral_fim": "https://api.mistral.ai/v1/fim/completions",
    "mistral_embedding": "https://api.mistral.ai/v1/embeddings",
    "deepseek_chat": "https://api.deepseek.com/chat/completions",
    "deepseek_fim": "https://api.deepseek.com/beta/completions",
    "openrouter_chat": "https://openrouter.ai/api/v1/chat/completions",
    "groq_chat": "https://api.groq.com/openai/v1/chat/completions",
    "voyage_embedding": "https://api.voyageai.com/v1/embeddings",
    "voyage_rerank": "https://api.voyageai.com/v1/rerank",
    "cohere_rerank": "https://api.cohere.com/v2/rerank",
    "jina_rerank": "https://api.jina.ai/v1/rerank",
    "anthropic_count_tokens": "https://api.anthropic.com/v1/messages/count_tokens",
}


def test_registry_holds_the_seed_services_the_recommended_chat_apis_and_part_2():
    assert set(SERVICES) == SEED_SERVICES | {"openai_responses", "cohere_chat"} | set(NEW_SERVICES)
    assert len(SERVICES) == 23 and len(PROVIDERS) == 10


def test_every_service_names_a_known_provider_and_kind():
    assert all(s.provider in PROVIDERS and s.kind in KINDS for s in SERVICES.values())


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_has_the_kind_providers_md_gives(name):
    assert SERVICES[name].kind == {**NEW_SERVICES, **SEED_KINDS}.get(name, "embedding")


@pytest.mark.parametrize("name", UPSTREAM_URLS)
def test_each_new_service_reaches_the_documented_url_by_default(name):
    service = SERVICES[name]
    url = PROVIDERS[service.provider].base_url + service.path.replace("{model}", "models/m")
    assert url == UPSTREAM_URLS[name]


def test_gemini_streams_from_its_own_path_with_sse():
    assert SERVICES["gemini_generate"].stream_path == (
        "/v1beta/{model}:streamGenerateContent?alt=sse")
    assert [s.name for s in SERVICES.values() if s.stream_path] == ["gemini_generate"]
    assert {s.name for s in SERVICES.values() if s.model_in_path} == {
        "gemini_generate", "gemini_embedding", "gemini_count_tokens"}


def test_streaming_services_are_the_chat_fim_and_messages_apis():
    assert {s.name for s in SERVICES.values() if s.streams} == {
        "openai_chat", "openai_responses", "anthropic_claude", "cohere_chat", "gemini_generate",
        "mistral_chat", "mistral_fim", "deepseek_chat", "deepseek_fim", "openrouter_chat",
        "groq_chat"}


def test_each_provider_has_its_sdks_base_url_variable():
    assert {p.name: p.base_url_env for p in PROVIDERS.values()} == {
        "openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL", "jina": "JINA_BASE_URL",
        "cohere": "CO_API_URL", "google": "GOOGLE_GEMINI_BASE_URL",
        "mistral": "MISTRAL_BASE_URL", "deepseek": "DEEPSEEK_BASE_URL",
        "openrouter": "OPENROUTER_BASE_URL", "groq": "GROQ_BASE_URL",
        "voyage": "VOYAGE_BASE_URL"}


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
def test_each_service_reaches_its_url_with_exactly_the_contract_headers(client, mocked, service):
    provider = PROVIDERS[service.provider]
    mocked.post(service_url(service.name), json={"id": "x", "message": {"content": []}})
    payload = {"prompt": "hi"} if service.name == "cohere_generate" else {"model": "m"}
    response = client.post("/api/proxy/external", json=body(service.name, payload),
                           headers={"Cookie": "a=b", "Authorization": "Bearer client-token",
                                    "X-Forwarded-For": "1.2.3.4", "X-Custom": "1"})
    assert response.status_code == 200
    sent = mocked.calls[0].request
    expected = {provider.auth_header: provider.auth_prefix + FAKE_KEY,
                **provider.default_headers,
                "Content-Type": "application/json", "Accept": "application/json",
                "Accept-Encoding": "identity", "User-Agent": USER_AGENT,
                "Content-Length": str(len(sent.body))}
    assert dict(sent.headers) == expected


def test_user_agent_names_the_service_and_a_version():
    name, version = USER_AGENT.split("/")
    assert name == "byok-proxy" and version[0].isdigit()


@pytest.mark.parametrize(("service", "header", "value"), [
    ("openai_chat", "OpenAI-Organization", "org-1"),
    ("openai_responses", "OpenAI-Project", "proj_1"),
    ("anthropic_claude", "anthropic-beta", "tools-2024-04-04"),
    ("anthropic_claude", "anthropic-version", "2026-10-21"),
    ("anthropic_count_tokens", "anthropic-version", "2026-10-21"),
    ("openrouter_chat", "HTTP-Referer", "https://app.example"),
    ("openrouter_chat", "X-OpenRouter-Title", "My assistant"),
    ("openrouter_chat", "X-Title", "My assistant"),
    ("openrouter_chat", "X-OpenRouter-Categories", "cli-agent"),
])
def test_option_header_reaches_its_own_provider(client, mocked, service, header, value):
    mocked.post(service_url(service), json={})
    client.post("/api/proxy/external", json=body(service), headers={header: value})
    assert mocked.calls[0].request.headers[header] == value


def test_client_anthropic_version_replaces_the_default(client, mocked):
    mocked.post(service_url("anthropic_claude"), json={})
    client.post("/api/proxy/external", json=body("anthropic_claude"),
                headers={"anthropic-version": "2026-10-21"})
    sent = mocked.calls[0].request.headers
    assert [k for k in sent if k.lower() == "anthropic-version"] == ["anthropic-version"]
    assert sent["anthropic-version"] == "2026-10-21"


@pytest.mark.parametrize(("service", "header"), [
    ("openai_chat", "anthropic-beta"), ("anthropic_claude", "OpenAI-Organization"),
    ("cohere_chat", "OpenAI-Project"), ("jina_embedding", "anthropic-version"),
    ("groq_chat", "HTTP-Referer"), ("openai_chat", "X-Title"), ("mistral_chat", "OpenAI-Project"),
    ("gemini_generate", "anthropic-version")])
def test_option_header_never_reaches_another_provider(client, mocked, service, header):
    mocked.post(service_url(service), json={})
    client.post("/api/proxy/external", json=body(service), headers={header: "x"})
    assert header not in mocked.calls[0].request.headers


# Each provider's request id header (contract §4, providers.md) and its error body as sent.
PROVIDER_ERRORS = {
    "openai": ("x-request-id", 429, {"error": {"message": "Rate limit", "type": "requests",
                                               "param": None, "code": "rate_limit_exceeded"}}),
    "anthropic": ("request-id", 529, {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"}),
    "jina": ("x-request-id", 403, {"detail": "AUTHZ_INSUFFICIENT_BALANCE"}),
    "cohere": ("x-request-id", 498, {"id": "e1", "message": "invalid api token"}),
    "google": ("x-request-id", 400, {"error": {
        "code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                     "reason": "API_KEY_INVALID"}]}}),
    "mistral": ("mistral-correlation-id", 422, {
        "object": "error", "message": {"detail": [{"type": "extra_forbidden"}]},
        "type": "invalid_request_error", "param": None, "code": None}),
    "deepseek": ("x-ds-trace-id", 402, {"error": {"message": "Insufficient Balance",
                                                  "type": "unknown_error", "param": None,
                                                  "code": "invalid_request_error"}}),
    "openrouter": ("X-Generation-Id", 402, {"error": {"code": 402, "message": "credits",
                                                      "metadata": {"x": 1}}}),
    "groq": ("x-request-id", 498, {"error": {"message": "capacity", "type": "x",
                                             "code": "capacity_exceeded"}}),
    "voyage": ("x-request-id", 429, {"detail": "You have not yet added your payment method"}),
}


def test_every_provider_has_an_error_case():
    assert set(PROVIDER_ERRORS) == set(PROVIDERS)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_providers_error_and_request_id_pass_through(client, mocked, provider):
    header, status, error = PROVIDER_ERRORS[provider]
    name = next(s.name for s in SERVICES.values() if s.provider == provider)
    assert header.lower() in PROVIDERS[provider].request_id_headers
    mocked.post(service_url(name), status=status, json=error,
                headers={header: "up-7", "request-id" if header != "request-id" else "x-other":
                         "not-the-id"})
    payload = {"prompt": "hi"} if name == "cohere_generate" else {"model": "m"}
    response = client.post("/api/proxy/external", json=body(name, payload))
    assert response.status_code == (status if status < 500 else 502)
    answer = response.get_json()["error"]
    assert (answer["code"], answer["upstreamStatus"], answer["details"]) == (
        "EXTERNAL_SERVICE_ERROR", status, error)
    assert response.headers["X-Upstream-Request-ID"] == "up-7"


def test_deepseek_trace_id_wins_over_its_request_id(client, mocked):
    mocked.post(service_url("deepseek_chat"), json={},
                headers={"x-request-id": "second", "x-ds-trace-id": "first"})
    response = client.post("/api/proxy/external", json=body("deepseek_chat"))
    assert response.headers["X-Upstream-Request-ID"] == "first"
    mocked.post(service_url("deepseek_chat"), json={}, headers={"x-request-id": "only"})
    response = client.post("/api/proxy/external", json=body("deepseek_chat"))
    assert response.headers["X-Upstream-Request-ID"] == "only"


@pytest.mark.parametrize("header", ["x-ratelimit-limit-req-minute", "ratelimitbysize-remaining",
                                    "x-ratelimitbysize-limit", "x-ratelimit-reset-tokens",
                                    "X-RateLimit-Remaining"])
def test_new_rate_limit_families_pass_on(client, mocked, header):
    mocked.post(service_url("mistral_chat"), json={}, headers={header: "2m59.56s"})
    response = client.post("/api/proxy/external", json=body("mistral_chat"))
    assert response.headers[header] == "2m59.56s"


@pytest.mark.parametrize("service", SERVICES.values(), ids=lambda s: s.name)
@pytest.mark.parametrize("status", [200, 429])
def test_no_service_lets_an_echoed_key_reach_the_client_or_the_log(client, mocked, service,
                                                                    status):
    """The secret sweep, service by service: the autouse fixtures check every log line and the
    answer for the key; here a provider echoes it in its body and a passed header."""
    echo = {"id": "x", "message": {"content": [{"type": "text", "text": FAKE_KEY}]},
            "note": f"your key {FAKE_KEY}"}
    mocked.post(service_url(service.name), status=status, json=echo,
                headers={"x-ratelimit-note": FAKE_KEY, "x-request-id": FAKE_KEY})
    payload = {"prompt": "hi"} if service.name == "cohere_generate" else {"model": "m"}
    response = client.post("/api/proxy/external", json=body(service.name, payload))
    assert response.status_code == status
    assert b"[REDACTED]" in response.get_data()
    assert response.headers["x-ratelimit-note"] == "[REDACTED]"


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if s.streams])
def test_no_streaming_service_lets_an_echoed_key_through_its_stream(client, mocked, name):
    mocked.post(service_url(name, stream=True), content_type="text/event-stream",
                body=f'data: {{"echo": "{FAKE_KEY}"}}\n\n'.encode())
    response = client.post("/api/proxy/external",
                           json=body(name, {"model": "m", "stream": True}))
    assert response.get_data() == b'data: {"echo": "[REDACTED]"}\n\n'
