"""cohere_generate: the legacy generate API carried out by Cohere's chat API (providers.md)."""
from __future__ import annotations

import json
from typing import Any

import marshmallow as ma

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


def chat_to_generate(chat_body: Any, prompt: str) -> dict[str, Any]:
    """The generate answer for a chat answer: one generation joining the text parts."""
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
