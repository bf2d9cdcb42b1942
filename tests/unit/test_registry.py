import pytest

from config import PROVIDERS, SERVICES, USER_AGENT
from tests.conftest import FAKE_KEY
from tests.unit.conftest import body, service_url

SEED_SERVICES = {"openai_chat", "openai_embedding", "anthropic_claude", "jina_embedding",
                 "cohere_generate", "cohere_embed"}


def test_registry_holds_the_seed_services_and_the_recommended_chat_apis():
    assert set(SERVICES) == SEED_SERVICES | {"openai_responses", "cohere_chat"}


def test_every_service_names_a_known_provider():
    assert all(s.provider in PROVIDERS for s in SERVICES.values())


def test_streaming_services_are_the_chat_responses_and_messages_apis():
    assert {s.name for s in SERVICES.values() if s.streams} == {
        "openai_chat", "openai_responses", "anthropic_claude", "cohere_chat"}


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
    ("cohere_chat", "OpenAI-Project"), ("jina_embedding", "anthropic-version")])
def test_option_header_never_reaches_another_provider(client, mocked, service, header):
    mocked.post(service_url(service), json={})
    client.post("/api/proxy/external", json=body(service), headers={header: "x"})
    assert header not in mocked.calls[0].request.headers
