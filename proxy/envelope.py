"""Request ids, the success and error bodies, and the provider headers passed on to the client."""
from __future__ import annotations

import json
import random
import re
import string
import time
from typing import Mapping

from flask import Response, g, request

_ID_ALPHABET = string.ascii_lowercase + string.digits
_INCOMING_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PASSED_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry")
# The rate-limit families: OpenAI's, Jina's, Groq's and OpenRouter's; Anthropic's; Mistral's.
_PASSED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "ratelimitbysize-",
                    "x-ratelimitbysize-")
UPSTREAM_ID_HEADER = "X-Upstream-Request-ID"
_UPSTREAM_ID_LOWER = UPSTREAM_ID_HEADER.lower()
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110 §5.6.2)
# A run of control characters (HTAB aside) with the white space after it: a folded line, a stray
# CR, LF or NUL. RFC 9110 §5.5 has a recipient replace them with spaces before passing them on.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]+[ \t]*")
DETAILS_TEXT_LIMIT = 2048


def request_id() -> str:
    """This request's id: a valid incoming X-Request-ID (as PaaS routers send), else a new one.

    Either way it holds only [A-Za-z0-9._:-], so the bodies splice it in unescaped."""
    rid = g.get("request_id")
    if rid is None:
        incoming = request.environ.get("HTTP_X_REQUEST_ID", "")
        if _INCOMING_ID.fullmatch(incoming):
            rid = incoming
        else:
            suffix = "".join(random.choices(_ID_ALPHABET, k=6))
            rid = f"req_{time.time_ns() // 1_000_000}_{suffix}"
        g.request_id = rid
    return rid


class RawJSON:
    """Bytes already checked to be one JSON value, spliced into a body as they are.

    It holds them rather than being them: a bytes subclass copies its value when made, a
    whole answer per request."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _dump(value: object) -> bytes:
    if isinstance(value, RawJSON):
        return value.data
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def success_body(data: RawJSON | object, rid: str) -> bytes:
    # Spliced rather than re-dumped so the provider's JSON comes back byte for byte; joined in
    # one copy (chained + would copy a 1 MB answer once per piece).
    return b"".join((b'{"success":true,"data":', _dump(data), b',"requestId":"', rid.encode(),
                     b'"}'))


def error_body(code: str, message: str, rid: str, *, service: str | None = None,
               upstream_status: int | None = None, details: object = None) -> bytes:
    error = {"code": code, "message": message}
    if service is not None:
        error["service"] = service
    if upstream_status is not None:
        error["upstreamStatus"] = upstream_status
    head = _dump(error)
    if details is not None:
        head = head[:-1] + b',"details":' + _dump(details) + b"}"
    return b'{"success":false,"error":' + head + b',"requestId":"' + rid.encode() + b'"}'


def details_from(body: bytes, raw_json: RawJSON | None) -> RawJSON | str | None:
    """A provider error body for error.details: its JSON as sent, else text cut to 2 KB."""
    if raw_json is not None:
        return raw_json
    if not body:
        return None
    return body[:DETAILS_TEXT_LIMIT].decode("utf-8", "ignore")


def passed_headers(upstream: Mapping[str, str],
                   request_id_headers: tuple[str, ...]) -> dict[str, str]:
    """The provider's rate-limit and retry headers, and as X-Upstream-Request-ID the first of
    its `request_id_headers` (lower case) it sent; no other header passes.

    Each as HTTP allows it in our answer (else gunicorn answers a bare 500): control characters
    become spaces, and a name that is no token is dropped."""
    out, ids = {}, {}
    for name in upstream:
        lower = name.lower()
        if lower in request_id_headers:
            ids[lower] = _clean(upstream[name])
        elif _passes(name, lower):
            out[name] = _clean(upstream[name])  # a repeated header comes once, values joined
    for name in request_id_headers:
        if name in ids:
            out[UPSTREAM_ID_HEADER] = ids[name]
            break
    return out


def _clean(value: str) -> str:
    return value if value.isprintable() else _CONTROLS.sub(" ", value).strip(" \t")


def _passes(name: str, lower: str) -> bool:
    """Whether a provider header is a retry or rate-limit one the proxy passes on as it is."""
    return lower in _PASSED_HEADERS or bool(lower.startswith(_PASSED_PREFIXES)
                                            and _TOKEN.fullmatch(name))


def is_passed_on(name: str) -> bool:
    """Whether an answer header is one the proxy passes on from a provider (for CORS)."""
    lower = name.lower()
    return lower == _UPSTREAM_ID_LOWER or _passes(name, lower)


def response(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(body, status, headers, content_type="application/json")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    # A repeated key is refused: parsers disagree on which copy wins (the first, the last),
    # so a body that a filter in front of us reads one way could be forwarded another.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


_strict = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float,
                           object_pairs_hook=_unique_keys)


def loads_strict(data: bytes) -> object:
    """Parse standard JSON only: UTF-8, no NaN/Infinity, no overflowing numbers, no repeated
    keys, no lone surrogate escapes (they cannot be sent on as UTF-8).

    Raises ValueError for anything else, deep nesting included (json raises RecursionError).
    """
    text = data.decode("utf-8")
    try:
        value = _strict.decode(text)
        if "\\ud" in text or "\\uD" in text:  # rare: only then can a lone surrogate hide
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeEncodeError:
        raise ValueError("lone surrogate") from None
    return value
