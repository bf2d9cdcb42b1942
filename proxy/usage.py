"""Token usage read from provider answers as they pass, never changing or holding them back.

Each service's row names its reader (config/registry.py, `usage`). A reader takes one decoded
answer, or one streamed event, and returns the counts it holds under the names of the request's
log line (in meaning OpenTelemetry's GenAI usage attributes): inputTokens (every prompt token,
cached ones included), outputTokens, cachedInputTokens, reasoningTokens, searchUnits. A count
that is not a plausible whole number makes the whole reading None: usage is a report, and an odd
one is left out rather than guessed at.
"""
from __future__ import annotations

from typing import Any, Callable

import msgspec

Usage = dict[str, int]
_MAX_COUNT = 2 ** 53  # past any real count, and still exact as a float in a Prometheus counter


class TopLevel(msgspec.Struct):
    """The top-level fields of a plain answer that can hold usage. Decoding a body into it
    checks the whole body as JSON (as a scan into Raw does, at the same speed) and builds
    nothing but these fields' raw bytes: the rest is skipped."""

    usage: msgspec.Raw = msgspec.Raw()
    usageMetadata: msgspec.Raw = msgspec.Raw()  # Gemini
    meta: msgspec.Raw = msgspec.Raw()  # Cohere's billed units
    input_tokens: msgspec.Raw = msgspec.Raw()  # Anthropic's count_tokens
    totalTokens: msgspec.Raw = msgspec.Raw()  # Gemini's countTokens


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _usage(**counts: Any) -> Usage | None:
    """The counts that are present; None if any is not a whole number from 0 to 2**53, or if
    none is present."""
    present = {name: value for name, value in counts.items() if value is not None}
    if not present or not all(type(v) is int and 0 <= v <= _MAX_COUNT for v in present.values()):
        return None
    return present


def _openai(answer: Any) -> Usage | None:
    # Chat completions and embeddings, and everyone compatible: Mistral, DeepSeek (its cache
    # hits), OpenRouter, Groq (x_groq.usage in a stream's last chunk), Jina and Voyage (only
    # total_tokens, all of it input).
    usage = _dig(answer, "usage") or _dig(answer, "x_groq", "usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if prompt is None and completion is None:
        prompt = usage.get("total_tokens")
    cached = _dig(usage, "prompt_tokens_details", "cached_tokens")
    return _usage(inputTokens=prompt, outputTokens=completion,
                  cachedInputTokens=usage.get("prompt_cache_hit_tokens") if cached is None
                  else cached,
                  reasoningTokens=_dig(usage, "completion_tokens_details", "reasoning_tokens"))


def _openai_responses(answer: Any) -> Usage | None:
    # A plain answer, or a stream's response.completed event, which holds the response.
    usage = _dig(answer, "usage") or _dig(answer, "response", "usage")
    if not isinstance(usage, dict):
        return None
    return _usage(inputTokens=usage.get("input_tokens"), outputTokens=usage.get("output_tokens"),
                  cachedInputTokens=_dig(usage, "input_tokens_details", "cached_tokens"),
                  reasoningTokens=_dig(usage, "output_tokens_details", "reasoning_tokens"))


def _anthropic(answer: Any) -> Usage | None:
    # A message, count_tokens' answer (input_tokens at the top), or a stream's message_start
    # (message.usage) or message_delta (usage, output counted so far). Anthropic counts cache
    # reads and writes apart from input_tokens: inputTokens adds them up.
    usage = _dig(answer, "usage") or _dig(answer, "message", "usage")
    if not isinstance(usage, dict):
        usage = answer if isinstance(answer, dict) and "input_tokens" in answer else None
    if usage is None:
        return None
    parts = [usage.get(name) for name in ("input_tokens", "cache_read_input_tokens",
                                          "cache_creation_input_tokens")]
    if parts[0] is not None and all(type(p) is int for p in parts if p is not None):
        parts[0] = sum(p for p in parts if p is not None)
    return _usage(inputTokens=parts[0], outputTokens=usage.get("output_tokens"),
                  cachedInputTokens=usage.get("cache_read_input_tokens"))


def _gemini(answer: Any) -> Usage | None:
    # generateContent (every streamed event holds the counts so far: the last wins) and
    # countTokens (totalTokens, all of it input).
    usage = _dig(answer, "usageMetadata")
    if not isinstance(usage, dict):
        return _usage(inputTokens=_dig(answer, "totalTokens"))
    return _usage(inputTokens=usage.get("promptTokenCount"),
                  outputTokens=usage.get("candidatesTokenCount"),
                  cachedInputTokens=usage.get("cachedContentTokenCount"),
                  reasoningTokens=usage.get("thoughtsTokenCount"))


def _cohere(answer: Any) -> Usage | None:
    # Chat (usage.tokens, else usage.billed_units; a stream's message-end holds it under
    # delta), embed (meta.billed_units) and rerank (meta.billed_units.search_units).
    usage = _dig(answer, "usage") or _dig(answer, "delta", "usage")
    counts = (_dig(usage, "tokens") or _dig(usage, "billed_units")
              or _dig(answer, "meta", "billed_units"))
    if not isinstance(counts, dict):
        return None
    return _usage(inputTokens=counts.get("input_tokens"), outputTokens=counts.get("output_tokens"),
                  searchUnits=counts.get("search_units"))


# Reader, and the bytes an event must hold to be worth decoding in a stream.
READERS: dict[str, tuple[Callable[[Any], Usage | None], bytes]] = {
    "openai": (_openai, b'"usage"'),
    "openai_responses": (_openai_responses, b'"usage"'),
    "anthropic": (_anthropic, b'"usage"'),
    "gemini": (_gemini, b'"usageMetadata"'),
    "cohere": (_cohere, b'"usage"'),
}


def from_answer(reader: str, top: TopLevel) -> Usage | None:
    """The usage of a plain answer, from the fields its scan kept."""
    answer = {}
    for name in TopLevel.__struct_fields__:
        raw = getattr(top, name)
        if raw:
            try:
                answer[name] = msgspec.json.decode(raw)
            except (msgspec.DecodeError, RecursionError):
                return None
    return READERS[reader][0](answer) if answer else None


def _boundary(data: bytes, start: int = 0, end: int | None = None, *, last: bool) -> int:
    """Where an event ends ("\\n\\n", or Gemini's "\\r\\n\\r\\n"): just past the last one in
    data[start:end] (`last`), or the first one; -1 for none."""
    find = data.rfind if last else data.find
    lf, crlf = find(b"\n\n", start, end), find(b"\r\n\r\n", start, end)
    ends = [i + 2 for i in (lf,) if i >= 0] + [i + 4 for i in (crlf,) if i >= 0]
    if not ends:
        return -1
    return max(ends) if last else min(ends)


def _event_at(data: bytes, pos: int, end: int) -> bytes:
    """The event of data[:end] that holds data[pos]."""
    start = _boundary(data, 0, pos, last=True)
    stop = _boundary(data, pos, end, last=False)
    return data[max(start, 0):stop if stop >= 0 else end]


class StreamUsage:
    """Reads a stream's usage from its bytes as they are relayed.

    Only an event that holds the reader's marker is ever decoded, and of those only the first
    and the last: OpenAI-style streams report usage once, at the end; Anthropic's input in
    message_start and its output in the last message_delta; Gemini the counts so far in every
    event. Bytes are kept only for the event not yet complete (at most _MAX_EVENT).
    """

    _MAX_EVENT = 1024 * 1024

    def __init__(self, reader: str) -> None:
        self._read, self._marker = READERS[reader]
        self._tail = b""
        self._first: bytes | None = None
        self._last: bytes | None = None

    def feed(self, chunk: bytes) -> None:
        if self._tail is None:
            return  # an event too large to keep: this stream's usage is not known
        data = self._tail + chunk if self._tail else chunk
        end = _boundary(data, last=True)
        if end < 0:
            end = 0
        self._tail = data[end:]
        if len(self._tail) > self._MAX_EVENT:
            self._tail = self._first = self._last = None
            return
        self._note(data, end)

    def _note(self, data: bytes, end: int) -> None:
        first = data.find(self._marker, 0, end)
        if first < 0:
            return
        if self._first is None:
            self._first = _event_at(data, first, end)
        self._last = _event_at(data, data.rfind(self._marker, 0, end), end)

    def result(self) -> Usage | None:
        """The usage the stream reported, the last event's counts over the first's."""
        if self._tail:  # a last event the connection's close ended (Gemini's)
            tail, self._tail = self._tail, b""
            self._note(tail, len(tail))
        usage: Usage = {}
        for event in dict.fromkeys(e for e in (self._first, self._last) if e is not None):
            usage.update(self._read(_event_data(event)) or {})
        return usage or None


def _event_data(event: bytes) -> Any:
    """An event's data lines, decoded as JSON; None for anything else."""
    data = b"\n".join(line[5:].lstrip(b" ") for line in event.splitlines()
                      if line.startswith(b"data:"))
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
