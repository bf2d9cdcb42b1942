"""Field rules for the proxy request and for cohere_generate's legacy payload; no HTTP here."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from config.registry import SERVICES

API_KEY_MAX = 4096
OPTION_HEADER_MAX = 256


def is_printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()


def _check_api_key(value: str) -> None:
    # Blank keys are let through here and answered as MISSING_API_KEY once the rest is valid.
    if not value.strip():
        return
    if len(value) > API_KEY_MAX:
        raise ma.ValidationError(f"Longer than {API_KEY_MAX} characters.")
    if not is_printable_ascii(value):
        raise ma.ValidationError("Must hold printable ASCII characters only.")


class ProxyRequestSchema(ma.Schema):
    """The body of POST /api/proxy/external."""

    class Meta:
        unknown = ma.RAISE

    target_service = fields.String(
        required=True,
        validate=validate.OneOf(
            SERVICES, error="Unknown service; GET /api/proxy/services lists them."))
    api_key = fields.String(load_default=None, allow_none=True, validate=_check_api_key)
    payload = fields.Dict(
        required=True,
        error_messages={"invalid": "Must be a JSON object.", "null": "Must be a JSON object.",
                        "required": "Missing data for required field."})


_USE_CHAT = "cohere_generate cannot honour it; use cohere_chat."


class CohereGenerateSchema(ma.Schema):
    """The legacy /v1/generate payload, limited to what Cohere's chat API can honour."""

    class Meta:
        unknown = ma.RAISE

    error_messages = {"unknown": f"Not supported: {_USE_CHAT}"}

    prompt = fields.String(required=True, validate=validate.Length(min=1))
    model = fields.String(validate=validate.Length(min=1))
    num_generations = fields.Integer(strict=True, validate=validate.Equal(
        1, error=f"Only 1 is supported: {_USE_CHAT}"))
    return_likelihoods = fields.String(validate=validate.Equal(
        "NONE", error=f"Only NONE is supported: {_USE_CHAT}"))
    stream = fields.Boolean(truthy=set(), falsy={False}, validate=validate.Equal(
        False, error=f"Streaming is not supported: {_USE_CHAT}"))
    # Passed to chat as they are; Cohere checks their values.
    max_tokens = fields.Raw()
    temperature = fields.Raw()
    k = fields.Raw()
    p = fields.Raw()
    seed = fields.Raw()
    stop_sequences = fields.Raw()
    frequency_penalty = fields.Raw()
    presence_penalty = fields.Raw()
