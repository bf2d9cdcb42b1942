"""Every provider of providers.md's Part 2 over real sockets: each new service's call and error
path, Gemini's model in the path and its 429, under both worker classes of `service`."""
import json

import pytest

from config import PROVIDERS, SERVICES
from tests.conftest import FAKE_KEY
from tests.e2e.test_proxy import EXPECTED_PATH

SEED = {"openai_chat", "openai_responses", "openai_embedding", "anthropic_claude",
        "jina_embedding", "cohere_generate", "cohere_chat", "cohere_embed"}
NEW = sorted(set(SERVICES) - SEED)

# An error in each new provider's own shape (providers.md), with its request id header.
ERRORS = {
    "google": (400, {"error": {"code": 400, "message": "API key not valid.",
                               "status": "INVALID_ARGUMENT"}}, "x-request-id"),
    "mistral": (422, {"object": "error", "message": {"detail": [{"type": "extra_forbidden"}]},
                      "type": "invalid_request_error", "param": None, "code": None},
                "mistral-correlation-id"),
    "deepseek": (402, {"error": {"message": "Insufficient Balance", "type": "unknown_error",
                                 "param": None, "code": "invalid_request_error"}},
                 "x-ds-trace-id"),
    "openrouter": (402, {"error": {"code": 402, "message": "Insufficient credits"}},
                   "X-Generation-Id"),
    "groq": (498, {"error": {"message": "Capacity exceeded", "type": "x",
                             "code": "capacity_exceeded"}}, "x-request-id"),
    "voyage": (429, {"detail": "You have not yet added your payment method"}, "x-request-id"),
    "anthropic": (529, {"type": "error", "error": {"type": "overloaded_error",
                                                   "message": "Overloaded"}}, "request-id"),
    "cohere": (499, {"id": "e", "message": "cancelled"}, "x-request-id"),
    "jina": (403, {"detail": "AUTHZ_INSUFFICIENT_BALANCE"}, "x-request-id"),
}


def call(name, **payload):
    return {"target_service": name, "api_key": FAKE_KEY, "payload": {"model": "m", **payload}}


@pytest.mark.parametrize("name", NEW)
def test_each_new_service_answers_through_the_proxy(service, upstream, name):
    answer = {"id": "a1", "object": "list", "data": [{"index": 0, "relevance_score": 0.9}]}
    response = service.post(call(name, stub="json", answer=answer, input=["x"]))
    assert response.status_code == 200, response.text
    assert response.json()["data"] == answer
    seen = upstream.last()
    assert seen["path"] == EXPECTED_PATH[name]
    provider = PROVIDERS[SERVICES[name].provider]
    assert dict(seen["headers"])[provider.auth_header] == provider.auth_prefix + FAKE_KEY
    sent = seen["payload"]
    assert ("model" in sent) != SERVICES[name].model_in_path and sent["input"] == ["x"]


@pytest.mark.parametrize("name", NEW)
def test_each_new_services_error_passes_through_with_its_request_id(service, name):
    status, error, id_header = ERRORS[SERVICES[name].provider]
    response = service.post(call(name, stub="status", status=status, body=error,
                                 headers={id_header: "up-42", "Set-Cookie": "a=b"}))
    assert response.status_code == (status if status < 500 else 502)
    body = response.json()["error"]
    assert (body["code"], body["service"], body["upstreamStatus"], body["details"]) == (
        "EXTERNAL_SERVICE_ERROR", name, status, error)
    assert response.headers["X-Upstream-Request-ID"] == "up-42"
    assert "Set-Cookie" not in response.headers


def test_gemini_429_gets_retry_after_from_retry_info(service):
    error = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "34.4s"}]}}
    response = service.post(call("gemini_generate", stub="status", status=429, body=error))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "35"
    assert response.json()["error"]["details"] == error


def test_a_gemini_error_before_a_stream_is_json_whatever_its_content_type(service):
    response = service.post(call("gemini_generate", stream=True, stub="status", status=400,
                                 content_type="text/event-stream",
                                 body={"error": {"code": 400, "status": "INVALID_ARGUMENT"}}))
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["details"]["error"]["status"] == "INVALID_ARGUMENT"


def test_rerank_and_token_counts_come_back_byte_for_byte(service):
    raw = '{"input_tokens": 14}'
    response = service.post(call("anthropic_count_tokens", stub="json", answer_raw=raw))
    assert json.loads(response.content)["data"] == {"input_tokens": 14}
    assert b'"data":' + raw.encode() in response.content


HOSTILE_MODELS = ["../x", "models/../x", "a/b", "x?alt=json", "x#f", "%2e%2e", "g 1", "g\n",
                  "g\r\n", "G", "gemini..x", "gеmini", "ｇ", "g\u200b", "a" * 129,
                  "tunedModels/a/b", "tunedModels/A", "models/", "", "/models/x", None, 7,
                  ["g"], {"m": 1}]


@pytest.mark.parametrize("model", HOSTILE_MODELS, ids=repr)
def test_a_hostile_gemini_model_reaches_no_provider(service, upstream, model):
    before = len(upstream.requests)
    body = {"target_service": "gemini_generate", "api_key": FAKE_KEY,
            "payload": {"model": model, "contents": [], "stub": "json"}}
    response = service.post(body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and "model" in error["details"]["payload"]
    assert len(upstream.requests) == before
