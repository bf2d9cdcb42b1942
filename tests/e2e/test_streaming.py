"""Streaming over real sockets (contract §6), under each worker class of the `service` fixture."""
import json
import socket
import time
import uuid

import pytest
import requests

from tests.conftest import FAKE_KEY

# Twenty events per service, in each provider's own format (providers.md).
FORMATS = {
    "openai_chat": [f'data: {{"id":"c1","choices":[{{"index":0,"delta":{{"content":"t{i}"}}}}]}}\n\n'
                    for i in range(19)] + ["data: [DONE]\n\n"],
    "openai_responses": ['event: response.created\ndata: {"type":"response.created"}\n\n'] + [
        f'event: response.output_text.delta\ndata: {{"type":"response.output_text.delta","delta":"t{i}"}}\n\n'
        for i in range(18)] + ['event: response.completed\ndata: {"type":"response.completed"}\n\n'],
    "anthropic_claude": ['event: message_start\ndata: {"type":"message_start"}\n\n',
                         "event: ping\ndata: {\"type\": \"ping\"}\n\n"] + [
        f'event: content_block_delta\ndata: {{"type":"content_block_delta","delta":{{"text":"t{i}"}}}}\n\n'
        for i in range(17)] + ['event: message_stop\ndata: {"type":"message_stop"}\n\n'],
    "cohere_chat": ['event: message-start\ndata: {"type":"message-start"}\n\n'] + [
        f'event: content-delta\ndata: {{"type":"content-delta","delta":{{"message":{{"content":{{"text":"t{i}"}}}}}}}}\n\n'
        for i in range(18)] + ['event: message-end\ndata: {"type":"message-end"}\n\n'],
    # Gemini: CRLF framing, no event names, no terminator (the last event has finishReason).
    "gemini_generate": [
        f'data: {{"candidates":[{{"content":{{"parts":[{{"text":"t{i}"}}],"role":"model"}}}}]}}\r\n\r\n'
        for i in range(19)] + [
        'data: {"candidates":[{"content":{"parts":[{"text":"."}]},"finishReason":"STOP"}],'
        '"usageMetadata":{"promptTokenCount":2}}\r\n\r\n'],
    "mistral_chat": [f'data: {{"id":"m1","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"content":"t{i}"}},"finish_reason":null}}]}}\n\n'
                     for i in range(19)] + ["data: [DONE]\n\n"],
    "mistral_fim": [f'data: {{"id":"f1","choices":[{{"index":0,"delta":{{"content":"    t{i}"}}}}]}}\n\n'
                    for i in range(19)] + ["data: [DONE]\n\n"],
    # DeepSeek sends keep-alive comments while the request waits in its queue.
    "deepseek_chat": [": keep-alive\n\n"] * 3 + [
        f'data: {{"id":"d1","choices":[{{"index":0,"delta":{{"content":"t{i}"}}}}]}}\n\n'
        for i in range(16)] + ["data: [DONE]\n\n"],
    "deepseek_fim": [": keep-alive\n\n"] + [
        f'data: {{"id":"d2","object":"text_completion","choices":[{{"index":0,"text":"t{i}"}}]}}\n\n'
        for i in range(18)] + ["data: [DONE]\n\n"],
    "openrouter_chat": [": OPENROUTER PROCESSING\n\n"] * 2 + [
        f'data: {{"id":"gen-1","choices":[{{"index":0,"delta":{{"content":"t{i}"}}}}]}}\n\n'
        for i in range(17)] + ["data: [DONE]\n\n"],
    "groq_chat": [f'data: {{"id":"g1","choices":[{{"index":0,"delta":{{"content":"t{i}"}}}}],"x_groq":{{"id":"req_1"}}}}\n\n'
                  for i in range(19)] + ["data: [DONE]\n\n"],
}
# How each provider frames its stream on the wire (the stand-in's `framing`).
FRAMING = {"gemini_generate": "close"}


def stream_body(service, **stub):
    payload = {"model": "m", "stream": True, "stub": "sse", **stub}
    return {"target_service": service, "api_key": FAKE_KEY, "payload": payload}


def read_stream(service, body):
    """POST and read the answer chunk by chunk; returns (response, [(arrival, bytes)])."""
    started = time.monotonic()
    response = requests.post(f"{service.url}/api/proxy/external", json=body, stream=True,
                             headers=service.headers, timeout=10)
    chunks = [(time.monotonic() - started, chunk)
              for chunk in response.iter_content(chunk_size=None)]
    return response, chunks, started


@pytest.mark.parametrize("name", FORMATS)
def test_stream_is_relayed_unchanged_as_it_arrives(service, upstream, name):
    events = FORMATS[name]
    stream_id = uuid.uuid4().hex
    response, chunks, started = read_stream(service, stream_body(
        name, events=events, interval=0.05, id=stream_id, framing=FRAMING.get(name, "chunked")))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["X-Request-ID"]
    assert b"".join(c for _, c in chunks) == "".join(events).encode()
    first_arrival = chunks[0][0]
    last_sent = upstream.sent[stream_id][-1][0] - started
    assert first_arrival < 0.2, first_arrival  # the stand-in takes ~1 s to send all 20
    assert first_arrival < last_sent - 0.5
    assert len(chunks) >= 10  # relayed event by event, not gathered


def test_a_key_echoed_across_stream_chunks_is_masked_without_holding_events(service):
    events = ['data: {"delta":"a"}\n\n', f'data: {{"delta":"{FAKE_KEY[:10]}',
              f'{FAKE_KEY[10:]}"}}\n\n', "data: [DONE]\n\n"]
    response, chunks, _ = read_stream(
        service, stream_body("openai_chat", events=events, interval=0.3))
    assert b"".join(c for _, c in chunks) == (
        "".join(events).replace(FAKE_KEY, "[REDACTED]").encode())
    first_arrival, first = chunks[0]
    assert first == events[0].encode() and first_arrival < 0.2, chunks


def test_provider_error_frames_inside_a_200_stream_pass_untouched(service):
    events = ['event: message_start\ndata: {"type":"message_start"}\n\n',
              'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
              '"message":"Overloaded"}}\n\n']
    response, chunks, _ = read_stream(service, stream_body("anthropic_claude", events=events))
    assert response.status_code == 200
    assert b"".join(c for _, c in chunks) == "".join(events).encode()


def test_every_streaming_service_has_its_format_here():
    from config import SERVICES
    assert set(FORMATS) == {name for name, s in SERVICES.items() if s.streams}


def test_a_gemini_stream_goes_to_its_sse_path_without_model_or_stream(service, upstream):
    response, chunks, _ = read_stream(service, stream_body(
        "gemini_generate", model="gemini-2.5-flash", events=FORMATS["gemini_generate"][-2:],
        framing="close"))
    assert response.status_code == 200
    seen = upstream.last()
    assert seen["path"] == "/google/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert "model" not in seen["payload"] and "stream" not in seen["payload"]
    assert dict(seen["headers"])["x-goog-api-key"] == FAKE_KEY


@pytest.mark.parametrize(("name", "comment"), [("deepseek_chat", ": keep-alive\n\n"),
                                               ("openrouter_chat", ": OPENROUTER PROCESSING\n\n")])
def test_comment_lines_reach_the_client_and_keep_the_read_timeout_from_firing(service, name,
                                                                              comment):
    """Four comments 0.6 s apart: 2.4 s of waiting in a provider's queue, past the service's
    1 s read timeout, which each comment restarts."""
    events = [comment] * 4 + [FORMATS[name][-2], "data: [DONE]\n\n"]
    response, chunks, _ = read_stream(service, stream_body(name, events=events, interval=0.6))
    data = b"".join(c for _, c in chunks)
    assert data == "".join(events).encode() and b"event: error" not in data
    assert chunks[0][1] == comment.encode()


IN_BAND_ERRORS = {
    "openrouter_chat": ['data: {"id":"gen-1","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n',
                        'data: {"id":"gen-1","error":{"code":502,"message":"Provider error"},'
                        '"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}\n\n',
                        "data: [DONE]\n\n"],
    "mistral_chat": ['data: {"id":"m1","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n',
                     'data: {"id":"m1","choices":[{"index":0,"delta":{"content":""},'
                     '"finish_reason":"error"}]}\n\n', "data: [DONE]\n\n"],
    "gemini_generate": ['data: {"candidates":[{"content":{"parts":[{"text":"a"}]}}]}\r\n\r\n',
                        'data: {"error":{"code":500,"message":"Internal","status":"INTERNAL"}}'
                        '\r\n\r\n'],
}


@pytest.mark.parametrize("name", IN_BAND_ERRORS)
def test_a_providers_error_inside_a_200_stream_passes_untouched(service, name):
    events = IN_BAND_ERRORS[name]
    response, chunks, _ = read_stream(
        service, stream_body(name, events=events, framing=FRAMING.get(name, "chunked")))
    assert response.status_code == 200
    assert b"".join(c for _, c in chunks) == "".join(events).encode()


def test_a_break_in_a_crlf_framed_stream_starts_the_error_frame_at_once(service):
    events = FORMATS["gemini_generate"][:2]
    response, chunks, _ = read_stream(
        service, stream_body("gemini_generate", events=events, then="reset"))
    data = b"".join(c for _, c in chunks)
    assert data.startswith("".join(events).encode() + b"event: error\ndata: ")
    assert error_frame(data)["error"]["code"] == "NETWORK_ERROR"


def test_openai_error_data_frame_passes_untouched(service):
    events = ['data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
              'data: {"error":{"message":"server error","type":"server_error"}}\n\n']
    response, chunks, _ = read_stream(service, stream_body("openai_chat", events=events))
    assert b"".join(c for _, c in chunks) == "".join(events).encode()


def error_frame(data: bytes) -> dict:
    head, _, frame = data.rpartition(b"event: error\ndata: ")
    assert frame.endswith(b"\n\n") and frame.count(b"\n") == 2
    return json.loads(frame)


@pytest.mark.parametrize(("then", "code"), [("reset", "NETWORK_ERROR"),
                                            ("stall", "UPSTREAM_TIMEOUT")])
def test_mid_stream_failure_ends_with_one_error_event(service, then, code):
    events = FORMATS["openai_chat"][:3]
    started = time.monotonic()
    response, chunks, _ = read_stream(
        service, stream_body("openai_chat", events=events, then=then, delay=3))
    data = b"".join(c for _, c in chunks)
    assert response.status_code == 200
    assert data.startswith("".join(events).encode())
    assert data.count(b"event: error") == 1
    envelope = error_frame(data)
    assert envelope["success"] is False
    assert envelope["error"]["code"] == code
    assert envelope["requestId"] == response.headers["X-Request-ID"]
    assert time.monotonic() - started < 2.5  # a stall ends at the 1 s read timeout


def test_mid_event_break_starts_the_error_frame_on_a_fresh_event(service):
    events = ['data: {"choices":[{"delta":{"content":"a"}}]}\n\n', 'data: {"choices":[{"del']
    response, chunks, _ = read_stream(
        service, stream_body("openai_chat", events=events, then="reset"))
    data = b"".join(c for _, c in chunks)
    assert data.startswith("".join(events).encode() + b"\n\nevent: error\ndata: ")
    assert error_frame(data)["error"]["code"] == "NETWORK_ERROR"


def test_error_status_before_the_stream_is_the_json_envelope(service):
    body = {"target_service": "anthropic_claude", "api_key": FAKE_KEY,
            "payload": {"stream": True, "stub": "status", "status": 429,
                        "headers": {"retry-after": "9"},
                        "body": {"type": "error", "error": {"type": "rate_limit_error"}}}}
    response = service.post(body)
    assert response.status_code == 429
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["retry-after"] == "9"
    assert response.json()["error"]["details"]["error"]["type"] == "rate_limit_error"


def hang_up_after_first_event(service, stream_id):
    body = json.dumps({"target_service": "openai_chat", "api_key": FAKE_KEY,
                       "payload": {"stream": True, "stub": "sse_forever", "id": stream_id,
                                   "interval": 0.05}}).encode()
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=5)
    sock.sendall(b"POST /api/proxy/external HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\n%sContent-Length: %d\r\n\r\n%s"
                 % (service.raw_headers, len(body), body))
    assert b"data: " in sock.recv(65536) or b"data: " in sock.recv(65536)
    sock.close()
    return time.monotonic()


def test_client_hang_up_closes_the_provider_connection_within_a_second(service, upstream):
    stream_id = uuid.uuid4().hex
    hung_up = hang_up_after_first_event(service, stream_id)
    deadline = hung_up + 3
    while stream_id not in upstream.closed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stream_id in upstream.closed, "the provider connection stayed open"
    assert upstream.closed[stream_id] - hung_up < 1.0


def test_abandoned_streams_free_their_workers(service, upstream):
    # More abandoned streams than the default 2 workers x 8 threads hold at once.
    ids = [uuid.uuid4().hex for _ in range(24)]
    for stream_id in ids:
        hang_up_after_first_event(service, stream_id)
    deadline = time.monotonic() + 5
    while not all(i in upstream.closed for i in ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(i in upstream.closed for i in ids)
    response = requests.get(f"{service.url}/api/proxy/health", timeout=2)
    assert response.status_code == 200


def summary_line(service, rid):
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for line in service.log().splitlines():
            if f'"{rid}"' in line and '"proxied request"' in line:
                return json.loads(line)
        time.sleep(0.05)
    raise AssertionError(f"no summary line for {rid}")


@pytest.mark.parametrize(("stub", "ended"), [({}, "completed"), ({"then": "reset"}, "upstream_error")])
def test_one_log_line_per_stream_says_how_it_ended(service, stub, ended):
    events = FORMATS["cohere_chat"][:4]
    rid = "stream-" + uuid.uuid4().hex
    response = service.post(stream_body("cohere_chat", events=events, **stub),
                            headers={"X-Request-ID": rid})
    assert response.status_code == 200
    line = summary_line(service, rid)
    assert (line["stream"], line["status"], line["upstreamStatus"], line["ended"]) == (
        True, 200, 200, ended)
    assert line["bytesRelayed"] == len("".join(events).encode())
    assert 0 < line["firstByteMs"] <= line["durationMs"]


def test_log_line_of_an_abandoned_stream_says_client_gone(service, upstream):
    stream_id = uuid.uuid4().hex
    hang_up_after_first_event(service, stream_id)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in service.log().splitlines()
                 if '"client_gone"' in line]
        if lines:
            break
        time.sleep(0.05)
    assert lines and lines[-1]["bytesRelayed"] > 0


def test_stream_flag_on_cohere_generate_is_a_validation_error(service):
    response = service.post({"target_service": "cohere_generate", "api_key": FAKE_KEY,
                             "payload": {"prompt": "hi", "stream": True}})
    assert response.status_code == 400
    assert "cohere_chat" in response.json()["error"]["details"]["payload"]["stream"][0]


def test_stream_flag_on_an_embedding_service_answers_json_without_hanging(service):
    response = service.post({"target_service": "openai_embedding", "api_key": FAKE_KEY,
                             "payload": {"input": "x", "stream": True}}, timeout=5)
    assert response.status_code == 200
    assert response.json()["data"]["path"] == "/v1/embeddings"
