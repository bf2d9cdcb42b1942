import marshmallow as ma
import pytest

from proxy.schemas import CohereGenerateSchema, ProxyRequestSchema
from tests.conftest import FAKE_KEY

VALID = {"target_service": "openai_chat", "api_key": FAKE_KEY, "payload": {"model": "m"}}


def load(**changes):
    return ProxyRequestSchema().load({**VALID, **changes})


def test_valid_request_loads():
    assert load() == VALID


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"target_service": "openai_gpt5"}, "target_service",
     "Unknown service; GET /api/proxy/services lists them."),
    ({"target_service": 7}, "target_service", "Not a valid string."),
    ({"target_service": None}, "target_service", "Field may not be null."),
    ({"payload": []}, "payload", "Must be a JSON object."),
    ({"payload": "text"}, "payload", "Must be a JSON object."),
    ({"payload": None}, "payload", "Must be a JSON object."),
    ({"api_key": 12345}, "api_key", "Not a valid string."),
    ({"api_key": ["k"]}, "api_key", "Not a valid string."),
    ({"api_key": "k" * 4097}, "api_key", "Longer than 4096 characters."),
    ({"api_key": "sk-\x00abc"}, "api_key", "Must hold printable ASCII characters only."),
    ({"api_key": "sk-abc\r\nX-Evil: 1"}, "api_key", "Must hold printable ASCII characters only."),
    ({"api_key": "sk-\u00e9"}, "api_key", "Must hold printable ASCII characters only."),
    ({"extra": 1}, "extra", "Unknown field."),
])
def test_invalid_field_gets_its_message(changes, field, message):
    with pytest.raises(ma.ValidationError) as caught:
        load(**changes)
    assert caught.value.messages[field] == [message]


@pytest.mark.parametrize("missing", ["target_service", "payload"])
def test_required_fields(missing):
    data = {k: v for k, v in VALID.items() if k != missing}
    with pytest.raises(ma.ValidationError) as caught:
        ProxyRequestSchema().load(data)
    assert caught.value.messages == {missing: ["Missing data for required field."]}


@pytest.mark.parametrize("key", [None, "", "   ", "\t \n"])
def test_blank_key_passes_the_schema_for_missing_api_key(key):
    assert load(api_key=key)["api_key"] == key


def test_absent_key_loads_as_none():
    assert ProxyRequestSchema().load({"target_service": "openai_chat", "payload": {}})[
        "api_key"] is None


def test_key_of_4096_characters_is_accepted():
    assert load(api_key="k" * 4096)


def test_no_message_echoes_the_key():
    with pytest.raises(ma.ValidationError) as caught:
        load(api_key=FAKE_KEY + "\x7f")
    assert FAKE_KEY not in str(caught.value.messages)


@pytest.mark.parametrize("payload", [
    {"prompt": "hi"},
    {"prompt": "hi", "num_generations": 1, "return_likelihoods": "NONE", "stream": False},
    {"prompt": "hi", "model": "command-r", "max_tokens": 5, "temperature": 0.2, "k": 3, "p": 0.9,
     "seed": 1, "stop_sequences": ["."], "frequency_penalty": 0.1, "presence_penalty": 0.1},
])
def test_generate_payload_that_chat_can_honour_loads(payload):
    assert CohereGenerateSchema().load(payload) == payload


@pytest.mark.parametrize(("payload", "field"), [
    ({}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": 3}, "prompt"),
    ({"prompt": "hi", "num_generations": 2}, "num_generations"),
    ({"prompt": "hi", "return_likelihoods": "ALL"}, "return_likelihoods"),
    ({"prompt": "hi", "stream": True}, "stream"),
    ({"prompt": "hi", "logit_bias": {"1": 2}}, "logit_bias"),
    ({"prompt": "hi", "preset": "p"}, "preset"),
    ({"prompt": "hi", "truncate": "END"}, "truncate"),
    ({"prompt": "hi", "anything": 1}, "anything"),
])
def test_generate_field_chat_cannot_honour_is_named(payload, field):
    with pytest.raises(ma.ValidationError) as caught:
        CohereGenerateSchema().load(payload)
    assert list(caught.value.messages) == [field]
    if field != "prompt":
        assert "cohere_chat" in caught.value.messages[field][0]
