"""One record per line whatever a client sent, and a payloadKeys of bounded size (contract §8)."""
import json
import logging

import pytest

from proxy.logs import (MAX_KEY_NAME, MAX_KEY_NAMES, MAX_PATH, JsonFormatter, RequestLog,
                        _key_names)

# Every character a line-oriented reader may split on: the C0 controls, DEL, the C1 controls
# (U+0085 NEL among them), and the line and paragraph separators.
BREAKERS = [chr(c) for c in [*range(0x20), *range(0x7f, 0xa0), 0x2028, 0x2029]]


def formatted(**fields) -> str:
    record = logging.LogRecord("proxy.requests", logging.INFO, __file__, 1, "request", None,
                               None)
    record.fields = fields
    return JsonFormatter().format(record)


@pytest.mark.parametrize("char", BREAKERS, ids=lambda c: f"U+{ord(c):04X}")
def test_a_line_breaking_character_is_escaped_in_key_names_and_values(char):
    line = formatted(payloadKeys=[f"a{char}b"], **{f"k{char}": f"v{char}"})
    assert char not in line
    assert len(line.split("\n")) == len(line.splitlines()) == 1
    parsed = json.loads(line)
    assert parsed["payloadKeys"] == [f"a{char}b"] and parsed[f"k{char}"] == f"v{char}"


def test_other_unicode_is_written_as_it_is():
    assert "日本 é 🙂" in formatted(note="日本 é 🙂")


def test_a_lone_surrogate_still_makes_one_json_line():
    line = formatted(payloadKeys=["\ud800\u2028"])
    assert len(line.splitlines()) == 1 and line.isascii()
    assert json.loads(line)["payloadKeys"] == ["\ud800\u2028"]


def test_a_few_short_key_names_are_logged_as_they_are():
    assert _key_names({"model": 1, "messages": 2}) == (["model", "messages"], None)
    assert _key_names({"k" * MAX_KEY_NAME: 1}) == (["k" * MAX_KEY_NAME], None)


def test_a_long_key_name_is_cut_and_marked():
    names, count = _key_names({"model": 1, "x" * 100_000: 2})
    assert names == ["model", "x" * (MAX_KEY_NAME - 1) + "…"] and count is None
    assert len(names[1]) == MAX_KEY_NAME


def test_many_keys_are_cut_to_32_and_counted():
    names, count = _key_names({f"key{i}": i for i in range(50_000)})
    assert names == [f"key{i}" for i in range(MAX_KEY_NAMES)] and count == 50_000


def test_the_request_line_says_how_many_keys_it_did_not_name():
    log = RequestLog("req_1", "POST", "/api/proxy/external")
    log.proxying("openai_chat", {f"{i:0>1000}": i for i in range(10_000)})
    log.status = 400
    record = []

    class Keep(logging.Handler):
        def emit(self, r):
            record.append(JsonFormatter().format(r))

    handler = Keep()
    logging.getLogger("proxy.requests").addHandler(handler)
    try:
        log.emit()
    finally:
        logging.getLogger("proxy.requests").removeHandler(handler)
    parsed = json.loads(record[0])
    assert len(parsed["payloadKeys"]) == 32 and parsed["payloadKeyCount"] == 10_000
    assert len(record[0].encode()) < 8 * 1024


def test_key_names_of_control_characters_stop_before_the_line_grows_past_its_budget():
    names, count = _key_names({"\x85" * 64 + str(i): i for i in range(32)})
    assert 0 < len(names) < 32 and count == 32
    assert len(JsonFormatter().format(_record(payloadKeys=names)).encode()) < 4 * 1024


def test_a_long_path_is_cut_in_the_line():
    log = RequestLog("req_1", "GET", "/x" + "\x01" * 4000)
    log.status = 404
    lines = []
    handler = logging.Handler()
    handler.emit = lambda r: lines.append(JsonFormatter().format(r))
    logging.getLogger("proxy.requests").addHandler(handler)
    try:
        log.emit()
    finally:
        logging.getLogger("proxy.requests").removeHandler(handler)
    path = json.loads(lines[0])["path"]
    assert len(path) == MAX_PATH and path.endswith("…")
    assert len(lines[0].encode()) < 4 * 1024


def _record(**fields):
    record = logging.LogRecord("proxy.requests", logging.INFO, __file__, 1, "request", None, None)
    record.fields = fields
    return record
