"""JSON-lines logging: the formatter, the one line per request, and redaction.

No Flask here, so that gunicorn.conf.py can import it before the app exists.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone

import msgspec

# A last line of defence: should any library ever print a credential, mask it. The words the
# pattern starts with are looked for first: the regex costs 20 us a line, the look-up 1 us.
_SECRET_WORDS = ("bearer", "api-key", "api_key")
_SECRET = re.compile(
    r"(?i)(bearer\s+|x-api-key['\"]?\s*[:=]\s*['\"]?|api_key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+")


# The secrets of the request being served (its key, its access token), as they would appear
# inside a JSON string: masked wherever they turn up in a line, whoever printed it.
_request_secrets: ContextVar[tuple[str, ...]] = ContextVar("request_secrets", default=())
SHORTEST_SECRET = 8  # below this a mask would blot out ordinary words, and no real key is


def hide(secret: str) -> None:
    """Mask this secret in every line logged while the current request is served."""
    if len(secret) >= SHORTEST_SECRET:
        # A key is printable and rarely holds a quote or backslash: then JSON prints it as is.
        if secret.isprintable() and '"' not in secret and "\\" not in secret:
            once = twice = secret
        else:
            once = json.dumps(secret, ensure_ascii=False)[1:-1]  # as printed in a JSON line
            twice = json.dumps(once, ensure_ascii=False)[1:-1]  # as JSON in a JSON line
        _request_secrets.set((*_request_secrets.get(), *dict.fromkeys((twice, once))))


def forget_secrets() -> None:
    """A new request begins: the last one's secrets no longer apply to this thread."""
    _request_secrets.set(())


def redact(text: str) -> str:
    for secret in _request_secrets.get():
        text = text.replace(secret, "[REDACTED]")
    lowered = text.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        text = _SECRET.sub(r"\1[REDACTED]", text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: level, message, timestamp, logger, and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "level": record.levelname.lower(),
            "message": record.getMessage(),
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "logger": record.name,
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return redact(_dumps(line))


_encode = msgspec.json.Encoder(enc_hook=str).encode  # what JSON cannot hold, as its str()
# Characters a line-oriented reader may split a line on (str.splitlines() does, and so do some
# log shippers) that JSON leaves unescaped: DEL, the C1 controls (U+0085 NEL among them), and
# the line and paragraph separators. JSON already escapes the C0 controls.
_LINE_BREAKERS = re.compile("[\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match) -> str:
    return f"\\u{ord(match[0]):04x}"


def _dumps(line: object) -> str:
    """The record as one JSON object on one line, whatever its strings hold (contract §8).

    msgspec writes a line in a tenth of json's time; json writes what msgspec refuses (a lone
    surrogate, which UTF-8 cannot hold), escaped to ASCII."""
    try:
        text = _encode(line).decode()
    except ValueError:
        return json.dumps(line, default=str)
    if text.isascii() and "\x7f" not in text:
        return text
    return _LINE_BREAKERS.sub(_escaped, text)


def configure_logging(level: str) -> None:
    """Send every logger's records to stderr as JSON lines, once per process."""
    logging.captureWarnings(True)  # Python warnings become JSON lines too
    # No line shows a thread, process or source line: skip looking them up for every record
    # (the logging HOWTO's "Optimization" settings; the source lookup is a third of a record).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    root = logging.getLogger()
    root.setLevel(level)
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)


_summary = logging.getLogger("proxy.requests")
MAX_KEY_NAMES, MAX_KEY_NAME = 32, 64
KEY_NAMES_BUDGET = MAX_KEY_NAMES * (MAX_KEY_NAME + 3)  # 32 plain names of 64, quoted, fit
MAX_PATH = 512  # a path's characters in a line (a 404's path is the client's to choose)
MAX_MODEL = 128


def model_name(model: object) -> str | None:
    """A payload's model for the log line: a string, cut to MAX_MODEL characters."""
    return model[:MAX_MODEL] if isinstance(model, str) else None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _key_names(payload: dict) -> tuple[list[str], int | None]:
    """The payload's top-level key names for the log line, at most 32 of at most 64 characters
    (a cut name ends with "…"), and how many there were when it names fewer: a client's 10,000
    keys of 1 KB must not make a 10 MB line. Never their values.

    Names stop early once they would take more of the line than 32 names of 64 plain
    characters do: a control character takes six as escaped, and 32 names of 64 of them would
    take 12 KB."""
    names = list(payload)
    if len(names) <= MAX_KEY_NAMES and sum(map(len, names)) <= 256 and all(
            len(name) <= MAX_KEY_NAME for name in names):
        return names, None  # the usual payload: a few short keys
    shown, used = [], 0
    for name in names[:MAX_KEY_NAMES]:
        name = _cut(name, MAX_KEY_NAME)
        used += len(_dumps([name])) - 2
        if used > KEY_NAMES_BUDGET:
            break
        shown.append(name)
    return shown, len(names) if len(shown) < len(names) else None


@dataclass
class RequestLog:
    """The one line each request logs when it ends (contract §8); never a key or content.

    Every route gets one, so gunicorn's own access line is not needed; a proxied request's
    line says which service, URL and payload keys were involved, and how a stream ended.
    """

    request_id: str
    method: str
    path: str  # without the query
    started: float = field(default_factory=time.perf_counter)
    message: str = "request"
    target_service: str | None = None
    url: str | None = None
    payload_keys: list[str] | None = None
    payload_key_count: int | None = None  # how many keys, when payload_keys names fewer
    model: str | None = None  # the payload's, cut to MAX_MODEL characters
    usage: dict[str, int] | None = None  # token counts the provider reported (proxy/usage.py)
    status: int | None = None
    upstream_status: int | None = None
    upstream_ms: float | None = None  # until the provider's answer headers
    error_code: str | None = None
    stream: bool = False
    bytes_relayed: int = 0
    first_byte_ms: float | None = None
    ended: str | None = None

    def proxying(self, service: str, payload: dict) -> None:
        self.message = "proxied request"
        self.target_service = service
        self.payload_keys, self.payload_key_count = _key_names(payload)
        self.model = model_name(payload.get("model"))

    def relayed(self, size: int) -> None:
        if self.first_byte_ms is None:
            self.first_byte_ms = round((time.perf_counter() - self.started) * 1000, 1)
        self.bytes_relayed += size

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def emit(self) -> None:
        fields = {"requestId": self.request_id, "method": self.method,
                  "path": _cut(self.path, MAX_PATH),
                  "status": self.status, "durationMs": round(self.elapsed() * 1000, 1)}
        if self.error_code is not None:
            fields["errorCode"] = self.error_code
        if self.target_service is not None:
            fields.update(targetService=self.target_service, url=self.url,
                          payloadKeys=self.payload_keys, upstreamStatus=self.upstream_status,
                          upstreamMs=self.upstream_ms, stream=self.stream)
            if self.payload_key_count is not None:
                fields["payloadKeyCount"] = self.payload_key_count
            if self.model is not None:
                fields["model"] = self.model
            if self.usage is not None:
                fields["usage"] = self.usage
        if self.stream:
            fields.update(bytesRelayed=self.bytes_relayed, firstByteMs=self.first_byte_ms,
                          ended=self.ended)
        level = logging.INFO if (self.status or 500) < 500 else logging.WARNING
        _summary.log(level, self.message, extra={"fields": fields})
