"""What a row of the registry names when a provider is not like the others (providers.md):
cohere_generate carried out by Cohere's chat API, and Gemini's wait read from its error body."""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

import marshmallow as ma
import msgspec

from proxy.errors import ExternalServiceError, ValidationError
from proxy.schemas import CohereGenerateSchema

_PASSED = ("max_tokens", "temperature", "k", "p", "seed", "stop_sequences",
           "frequency_penalty", "presence_penalty")
_schema = CohereGenerateSchema()


def generate_to_chat(payload: dict[str, Any], default_model: str) -> dict[str, Any]:
    """The chat request for a generate payload; a field chat cannot honour is a ValidationError."""
    try:
        loaded = _schema.load(payload)
    except ma.ValidationError as e:
        raise ValidationError("Invalid cohere_generate payload.", service="cohere_generate",
                              details={"payload": e.messages}) from None
    chat = {"model": loaded.get("model", default_model),
            "messages": [{"role": "user", "content": loaded["prompt"]}]}
    chat.update((name, loaded[name]) for name in _PASSED if name in loaded)
    return chat


def chat_to_generate(chat_body: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """The generate answer for a chat answer: one generation joining the text parts."""
    prompt = payload["prompt"]
    try:
        parts = chat_body["message"].get("content") or []
        text = "".join(part["text"] for part in parts if part.get("type") == "text")
        return {
            "id": chat_body["id"],
            "prompt": prompt,
            "generations": [{"id": chat_body["id"], "text": text,
                             "finish_reason": chat_body.get("finish_reason")}],
            "meta": {"billed_units": (chat_body.get("usage") or {}).get("billed_units", {})},
        }
    except (KeyError, TypeError, AttributeError):
        raise ExternalServiceError("cohere_generate: chat answered in an unexpected shape",
                                   service="cohere_generate", upstream_status=200,
                                   details=json.dumps(chat_body)[:2048]) from None


TRANSLATIONS = {"cohere_generate": (generate_to_chat, chat_to_generate)}

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
# A google.protobuf.Duration as JSON writes it: seconds, up to nine decimals, then "s".
_DURATION = re.compile(r"([0-9]{1,12})(\.[0-9]{1,9})?s")
_decode = msgspec.json.decode


def google_retry_info(body: bytes) -> str | None:
    """Retry-After, in whole seconds rounded up, from a Gemini error's RetryInfo.retryDelay
    (`{"error": {"details": [{"@type": ".../google.rpc.RetryInfo", "retryDelay": "34.4s"}]}}`).
    The error may also come wrapped in a list, as a streamed call's can. None for a body
    without one, or with one in any other shape: the answer is then passed on as it is, never
    failed."""
    try:
        value = _decode(body)
        for error in value if isinstance(value, list) else (value,):
            for detail in error["error"]["details"]:
                if detail.get("@type") == _RETRY_INFO:
                    match = _DURATION.fullmatch(detail["retryDelay"])
                    return str(math.ceil(float(match[0][:-1]))) if match else None
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError, RecursionError):
        pass
    return None


RETRY_AFTER_FROM_BODY: dict[str, Callable[[bytes], str | None]] = {
    "google_retry_info": google_retry_info}
