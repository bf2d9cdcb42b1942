"""What copying a provider's answer through the proxy's server costs: the bench's measure of the
target "a 1 MB answer costs no more over a 1 KB one than copying it would take".

A bare WSGI app, run by bench/run.py with the service's own gunicorn.conf.py (gevent, the same
workers, the same malloc settings), that posts the payload over a kept-alive urllib3 connection
and hands the answer back as the pool read it: one read from the provider's socket into a buffer,
one send to the client's. No check, no masking, no envelope, no log line: the difference between
its cost for a 1 MB answer and for a chat answer is what moving the bytes takes in this stack.
"""
import json
import os

import urllib3

_pool = urllib3.PoolManager(maxsize=32, retries=False)
_URLS = {"openai_chat": os.environ["OPENAI_BASE_URL"] + "/chat/completions",
         "openai_embedding": os.environ["OPENAI_BASE_URL"] + "/embeddings",
         "jina_embedding": os.environ["JINA_BASE_URL"] + "/embeddings"}


def app(environ: dict, start_response) -> list[bytes]:
    if environ["REQUEST_METHOD"] == "GET":  # the bench's start-up probe
        start_response("200 OK", [("Content-Length", "2")])
        return [b"{}"]
    body = json.loads(environ["wsgi.input"].read())
    answer = _pool.request("POST", _URLS[body["target_service"]],
                           body=json.dumps(body["payload"]).encode(),
                           headers={"Authorization": "Bearer " + body["api_key"],
                                    "Content-Type": "application/json"})
    start_response(f"{answer.status} OK", [("Content-Type", "application/json"),
                                           ("Content-Length", str(len(answer.data)))])
    return [answer.data]
