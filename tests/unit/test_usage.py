"""Token usage read from every service's answers, plain and streamed (proxy/usage.py): the right
numbers in the log line and the counters, and an answer that is never changed by the reading."""
import json

import pytest
from prometheus_client import REGISTRY

from config import SERVICES
from proxy.usage import READERS, StreamUsage
from tests.unit.conftest import body, service_url

OPENAI_CHAT = ({"usage": {"prompt_tokens": 19, "completion_tokens": 80, "total_tokens": 99,
                          "prompt_tokens_details": {"cached_tokens": 3},
                          "completion_tokens_details": {"reasoning_tokens": 5}}},
               {"inputTokens": 19, "outputTokens": 80, "cachedInputTokens": 3,
                "reasoningTokens": 5})
EMBEDDING = ({"object": "list", "data": [], "usage": {"prompt_tokens": 5, "total_tokens": 5}},
             {"inputTokens": 5})
TOTAL_ONLY = ({"data": [], "usage": {"total_tokens": 12}}, {"inputTokens": 12})
COHERE_CHAT = ({"id": "c", "finish_reason": "COMPLETE", "message": {"content": []},
                "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 10},
                          "tokens": {"input_tokens": 70, "output_tokens": 10}}},
               {"inputTokens": 70, "outputTokens": 10})

# One real-shaped plain answer per service, and the usage it reports (providers' references).
PLAIN = {
    "openai_chat": OPENAI_CHAT,
    "openai_responses": ({"usage": {"input_tokens": 20, "output_tokens": 30, "total_tokens": 50,
                                    "input_tokens_details": {"cached_tokens": 4},
                                    "output_tokens_details": {"reasoning_tokens": 6}}},
                         {"inputTokens": 20, "outputTokens": 30, "cachedInputTokens": 4,
                          "reasoningTokens": 6}),
    "openai_embedding": EMBEDDING,
    "anthropic_claude": ({"type": "message", "usage": {
        "input_tokens": 10, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 8,
        "output_tokens": 25}}, {"inputTokens": 20, "outputTokens": 25, "cachedInputTokens": 8}),
    "anthropic_count_tokens": ({"input_tokens": 14}, {"inputTokens": 14}),
    "jina_embedding": ({"data": [], "usage": {"total_tokens": 7, "prompt_tokens": 7}},
                       {"inputTokens": 7}),
    "jina_rerank": TOTAL_ONLY,
    "cohere_generate": COHERE_CHAT,
    "cohere_chat": COHERE_CHAT,
    "cohere_embed": ({"id": "e", "embeddings": {}, "meta": {"billed_units": {"input_tokens": 3}}},
                     {"inputTokens": 3}),
    "cohere_rerank": ({"id": "r", "results": [], "meta": {"billed_units": {"search_units": 1}}},
                      {"searchUnits": 1}),
    "gemini_generate": ({"candidates": [], "usageMetadata": {
        "promptTokenCount": 8, "candidatesTokenCount": 12, "cachedContentTokenCount": 2,
        "thoughtsTokenCount": 4, "totalTokenCount": 26}},
        {"inputTokens": 8, "outputTokens": 12, "cachedInputTokens": 2, "reasoningTokens": 4}),
    "gemini_embedding": ({"embeddings": [{"values": [0.1]}]}, None),  # Gemini reports none
    "gemini_count_tokens": ({"totalTokens": 31}, {"inputTokens": 31}),
    "mistral_chat": OPENAI_CHAT,
    "mistral_fim": ({"usage": {"prompt_tokens": 9, "completion_tokens": 16, "total_tokens": 25}},
                    {"inputTokens": 9, "outputTokens": 16}),
    "mistral_embedding": EMBEDDING,
    "deepseek_chat": ({"usage": {"prompt_tokens": 30, "completion_tokens": 9,
                                 "prompt_cache_hit_tokens": 20, "prompt_cache_miss_tokens": 10,
                                 "completion_tokens_details": {"reasoning_tokens": 4}}},
                      {"inputTokens": 30, "outputTokens": 9, "cachedInputTokens": 20,
                       "reasoningTokens": 4}),
    "deepseek_fim": ({"choices": [{"text": "x"}], "usage": {
        "prompt_tokens": 6, "completion_tokens": 2, "prompt_cache_hit_tokens": 0}},
        {"inputTokens": 6, "outputTokens": 2, "cachedInputTokens": 0}),
    "openrouter_chat": OPENAI_CHAT,
    "groq_chat": ({"usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42,
                             "queue_time": 0.02}}, {"inputTokens": 40, "outputTokens": 2}),
    "voyage_embedding": TOTAL_ONLY,
    "voyage_rerank": TOTAL_ONLY,
}

OPENAI_STREAM = ['data: {"choices":[{"delta":{"content":"Hi"}}],"usage":null}\n\n',
                 'data: {"choices":[],"usage":{"prompt_tokens":19,"completion_tokens":80,'
                 '"prompt_tokens_details":{"cached_tokens":3}}}\n\n', "data: [DONE]\n\n"]
OPENAI_STREAM_USAGE = {"inputTokens": 19, "outputTokens": 80, "cachedInputTokens": 3}
# One real-shaped stream per streaming service, and the usage it reports.
STREAMS = {
    "openai_chat": (OPENAI_STREAM, OPENAI_STREAM_USAGE),
    "openai_responses": ([
        'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n',
        'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        '"delta":"Hi"}\n\n',
        'event: response.completed\ndata: {"type":"response.completed","response":{"usage":'
        '{"input_tokens":20,"output_tokens":30,"output_tokens_details":{"reasoning_tokens":6}}}}'
        '\n\n'], {"inputTokens": 20, "outputTokens": 30, "reasoningTokens": 6}),
    "anthropic_claude": ([
        'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens"'
        ':25,"cache_read_input_tokens":5,"output_tokens":1}}}\n\n',
        'event: ping\ndata: {"type": "ping"}\n\n',
        'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"Hi"}}'
        '\n\n',
        'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        '"usage":{"output_tokens":15}}\n\n',
        'event: message_stop\ndata: {"type":"message_stop"}\n\n'],
        {"inputTokens": 30, "outputTokens": 15, "cachedInputTokens": 5}),
    "cohere_chat": ([
        'event: message-start\ndata: {"type":"message-start"}\n\n',
        'event: content-delta\ndata: {"type":"content-delta","delta":{"message":{}}}\n\n',
        'event: message-end\ndata: {"type":"message-end","delta":{"finish_reason":"COMPLETE",'
        '"usage":{"billed_units":{"input_tokens":5,"output_tokens":10},"tokens":'
        '{"input_tokens":70,"output_tokens":10}}}}\n\n'], {"inputTokens": 70, "outputTokens": 10}),
    "gemini_generate": ([
        'data: {"candidates":[{"content":{"parts":[{"text":"Hi"}]}}],"usageMetadata":'
        '{"promptTokenCount":8,"cachedContentTokenCount":2}}\r\n\r\n',
        'data: {"candidates":[{"content":{"parts":[{"text":"!"}]},"finishReason":"STOP"}],'
        '"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":12,"thoughtsTokenCount":4}}'
        '\r\n\r\n'],
        {"inputTokens": 8, "outputTokens": 12, "cachedInputTokens": 2, "reasoningTokens": 4}),
    "mistral_chat": (OPENAI_STREAM, OPENAI_STREAM_USAGE),
    "mistral_fim": (OPENAI_STREAM, OPENAI_STREAM_USAGE),
    "deepseek_chat": ([": keep-alive\n\n", 'data: {"choices":[{"delta":{"content":"x"}}]}\n\n',
                       'data: {"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":9,'
                       '"prompt_cache_hit_tokens":20}}\n\n', "data: [DONE]\n\n"],
                      {"inputTokens": 30, "outputTokens": 9, "cachedInputTokens": 20}),
    "deepseek_fim": (OPENAI_STREAM, OPENAI_STREAM_USAGE),
    "openrouter_chat": ([": OPENROUTER PROCESSING\n\n", *OPENAI_STREAM], OPENAI_STREAM_USAGE),
    "groq_chat": (['data: {"choices":[{"delta":{"content":"x"}}],"x_groq":{"id":"req_1"}}\n\n',
                   'data: {"choices":[],"x_groq":{"id":"req_1","usage":{"prompt_tokens":40,'
                   '"completion_tokens":2}}}\n\n', "data: [DONE]\n\n"],
                  {"inputTokens": 40, "outputTokens": 2}),
}


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0


TYPES = {"inputTokens": "input", "outputTokens": "output", "cachedInputTokens": "cached_input",
         "reasoningTokens": "reasoning"}


def test_every_service_has_a_plain_case_and_every_streaming_one_a_stream():
    assert set(PLAIN) == set(SERVICES)
    assert set(STREAMS) == {name for name, s in SERVICES.items() if s.streams}
    assert {s.usage for s in SERVICES.values()} <= set(READERS)


def summary(caplog):
    return [r for r in caplog.records if r.name == "proxy.requests"][-1].fields


def counters(service):
    return {kind: sample("byok_proxy_tokens_total", service=service, model="m", type=kind)
            for kind in TYPES.values()}


@pytest.mark.parametrize("name", PLAIN)
def test_a_plain_answers_usage_reaches_the_log_line_and_the_counters(client, mocked, caplog,
                                                                     name):
    answer, expected = PLAIN[name]
    raw = json.dumps(answer)
    mocked.post(service_url(name), body=raw, content_type="application/json")
    before = counters(name)
    payload = {"prompt": "hi", "model": "m"} if name == "cohere_generate" else {"model": "m"}
    response = client.post("/api/proxy/external", json=body(name, payload))
    assert response.status_code == 200
    if name != "cohere_generate":  # translated; the others come back byte for byte
        assert response.get_data().startswith(b'{"success":true,"data":' + raw.encode() + b",")
    line = summary(caplog)
    assert line.get("usage") == expected and line["model"] == "m"
    grown = {kind: counters(name)[kind] - before[kind] for kind in TYPES.values()}
    assert grown == {TYPES[field]: (expected or {}).get(field, 0) for field in TYPES}


@pytest.mark.parametrize("name", STREAMS)
def test_a_streams_usage_reaches_the_log_line_and_the_counters(client, mocked, caplog, name):
    events, expected = STREAMS[name]
    stream = "".join(events).encode()
    mocked.post(service_url(name, stream=True), body=stream, content_type="text/event-stream")
    before = counters(name)
    response = client.post("/api/proxy/external", json=body(name, {"model": "m", "stream": True}))
    assert response.get_data() == stream
    assert summary(caplog)["usage"] == expected
    assert counters(name)["input"] - before["input"] == expected["inputTokens"]


@pytest.mark.parametrize("name", STREAMS)
def test_a_streams_usage_is_found_wherever_its_chunks_break(name):
    events, expected = STREAMS[name]
    stream = "".join(events).encode()
    reader = SERVICES[name].usage
    for cut in range(1, len(stream)):
        counts = StreamUsage(reader)
        counts.feed(stream[:cut])
        counts.feed(stream[cut:])
        assert counts.result() == expected, cut
    counts = StreamUsage(reader)
    for i in range(len(stream)):
        counts.feed(stream[i:i + 1])
    assert counts.result() == expected


def test_a_last_event_without_its_blank_line_still_counts():
    counts = StreamUsage("gemini")
    counts.feed(b'data: {"usageMetadata":{"promptTokenCount":3}}')
    assert counts.result() == {"inputTokens": 3}


def test_a_stream_without_usage_reports_none():
    counts = StreamUsage("openai")
    counts.feed(b'data: {"choices":[{"delta":{"content":"\\"usage\\": 5"}}]}\n\ndata: [DONE]\n\n')
    assert counts.result() is None


def test_an_event_too_large_to_keep_leaves_the_usage_unknown():
    counts = StreamUsage("openai")
    counts.feed(b'data: {"text":"' + b"x" * (2 * 1024 * 1024))
    counts.feed(b'","usage":{"prompt_tokens":1}}\n\n')
    assert counts.result() is None


HOSTILE = {
    "a string": '"12"', "a negative": "-1", "10^30": "1" + "0" * 30, "a float": "1.5",
    "true": "true", "an object": '{"n": 1}',
    "nested 500 deep": "[" * 500 + "]" * 500,
}


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE)
@pytest.mark.parametrize("name", ["openai_chat", "anthropic_claude", "gemini_generate",
                                  "cohere_chat", "openai_responses"])
def test_hostile_usage_gives_no_usage_and_an_untouched_answer(client, mocked, caplog, name,
                                                              value):
    field = {"anthropic_claude": '"usage":{"input_tokens":%s,"output_tokens":%s}',
             "gemini_generate": '"usageMetadata":{"promptTokenCount":%s,"candidatesTokenCount":%s}',
             "cohere_chat": '"usage":{"tokens":{"input_tokens":%s,"output_tokens":%s}}',
             "openai_responses": '"usage":{"input_tokens":%s,"output_tokens":%s}'}.get(
        name, '"usage":{"prompt_tokens":%s,"completion_tokens":%s}')
    raw = '{"id":"x",' + field % (value, 3) + "}"
    mocked.post(service_url(name), body=raw, content_type="application/json")
    response = client.post("/api/proxy/external", json=body(name))
    assert response.get_data().startswith(b'{"success":true,"data":' + raw.encode() + b",")
    assert "usage" not in summary(caplog)


@pytest.mark.parametrize("raw", ['{"usage": null}', '{"usage": "lots"}', '{"usage": []}',
                                 '{"usage": {}}', "[1, 2]", '"text"', "{}",
                                 '{"usage":' + "[" * 10_000 + "]" * 10_000 + "}"])
def test_missing_or_odd_usage_blocks_leave_the_answer_as_before(client, mocked, caplog, raw):
    """Nested past msgspec's depth limit, a body was and is not JSON to the proxy (502)."""
    mocked.post(service_url("openai_chat"), body=raw, content_type="application/json")
    response = client.post("/api/proxy/external", json=body())
    if raw.startswith('{"usage":['):
        assert response.status_code == 502
    else:
        assert response.get_data().startswith(b'{"success":true,"data":' + raw.encode() + b",")
    assert "usage" not in summary(caplog)


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE)
def test_hostile_usage_in_a_stream_gives_no_usage(value):
    counts = StreamUsage("openai")
    counts.feed(b'data: {"usage":{"prompt_tokens":%s,"completion_tokens":2}}\n\n' % value.encode())
    assert counts.result() is None


def test_a_stream_event_nested_10000_deep_gives_no_usage():
    counts = StreamUsage("openai")
    counts.feed(b'data: {"usage":' + b"[" * 10_000 + b"]" * 10_000 + b"}\n\n")
    assert counts.result() is None


def test_the_model_in_the_log_line_is_cut_to_128_characters(client, mocked, caplog):
    mocked.post(service_url("openai_chat"), json={})
    client.post("/api/proxy/external", json=body(payload={"model": "m" * 1000}))
    assert summary(caplog)["model"] == "m" * 128


def test_cohere_generate_logs_the_model_it_chose(client, mocked, caplog):
    mocked.post(service_url("cohere_generate"), json=COHERE_CHAT[0])
    client.post("/api/proxy/external", json=body("cohere_generate", {"prompt": "hi"}))
    assert summary(caplog)["model"] == "command-a-03-2025"
