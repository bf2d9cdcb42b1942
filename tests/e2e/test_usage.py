"""Usage over real sockets: the stand-in provider reports tokens in each format, plain and
streamed (a usage event split across two chunks among them), and the service's log lines and
/metrics, added up over its gunicorn workers, show them."""
import json
import re
import time

import pytest

from tests.conftest import FAKE_KEY
from tests.e2e.conftest import base_urls, start_service
from tests.unit.test_usage import PLAIN, STREAMS

STREAMED = ["anthropic_claude", "gemini_generate", "cohere_chat", "groq_chat", "deepseek_chat",
            "openai_responses"]
PLAIN_CASES = ["openai_chat", "anthropic_count_tokens", "cohere_rerank", "deepseek_chat",
               "gemini_count_tokens", "voyage_embedding"]
ROUNDS = 2


@pytest.fixture(scope="module")
def counted(upstream, tmp_path_factory):
    """A service of its own, so that its metrics hold only this module's calls."""
    running = start_service(tmp_path_factory.mktemp("usage"), base_urls(upstream.url))
    yield running
    running.stop()


def call(name, model, **payload):
    return {"target_service": name, "api_key": FAKE_KEY, "payload": {"model": model, **payload}}


def model(name: str, how: str) -> str:
    return f"{how}-{name.replace('_', '-')}"  # a valid Gemini model too


def split_usage_event(events):
    """The event holding usage cut in two, so the stand-in sends it in two chunks."""
    out = []
    for event in events:
        at = event.find('"usage')
        out.extend([event[:at + 4], event[at + 4:]] if at >= 0 else [event])
    return out


def token_samples(text: str) -> dict[tuple[str, str, str], float]:
    pattern = re.compile(r'^byok_proxy_tokens_total\{(.*)\} (\S+)$', re.M)
    samples = {}
    for labels, value in pattern.findall(text):
        parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        samples[(parsed["service"], parsed["model"], parsed["type"])] = float(value)
    return samples


def test_usage_in_every_format_reaches_the_log_and_metrics(counted):
    types = {"inputTokens": "input", "outputTokens": "output",
             "cachedInputTokens": "cached_input", "reasoningTokens": "reasoning"}
    expected = {}
    for _ in range(ROUNDS):
        for name in PLAIN_CASES:
            answer, usage = PLAIN[name]
            response = counted.post(call(name, model(name, "plain"), stub="json", answer=answer))
            assert response.status_code == 200, response.text
            for field, kind in types.items():
                if field in usage:
                    key = (name, model(name, "plain"), kind)
                    expected[key] = expected.get(key, 0) + usage[field]
        for name in STREAMED:
            events, usage = STREAMS[name]
            framing = "close" if name == "gemini_generate" else "chunked"
            response = counted.post(call(name, model(name, "stream"), stream=True, stub="sse",
                                         events=split_usage_event(events), framing=framing))
            assert response.status_code == 200 and response.text == "".join(events)
            for field, kind in types.items():
                if field in usage:
                    key = (name, model(name, "stream"), kind)
                    expected[key] = expected.get(key, 0) + usage[field]
    # A call's line and counts are written once its last byte is sent, which may be a moment
    # after the client has read it.
    deadline = time.monotonic() + 5
    while True:
        metrics = token_samples(counted.get("/metrics").text)
        if {key: metrics.get(key) for key in expected} == expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {key: metrics.get(key) for key in expected} == expected
    lines = [json.loads(line) for line in counted.log().splitlines()
             if '"proxied request"' in line]
    assert {line["model"]: line["usage"] for line in lines if "usage" in line} == {
        **{model(n, "plain"): PLAIN[n][1] for n in PLAIN_CASES},
        **{model(n, "stream"): STREAMS[n][1] for n in STREAMED}}
    searches = metrics.get(("cohere_rerank", model("cohere_rerank", "plain"), "input"))
    assert searches is None  # search units are logged, not counted as tokens
