"""The comparison baseline: the plain Flask + requests.Session.post + json proxy most people
write first (parse, post, parse the answer, jsonify it again). Run by bench/run.py under gunicorn's
gthread worker, with gunicorn's usual 2 x cores + 1 workers of 8 threads each."""
import os

import requests
from flask import Flask, jsonify, request

app = Flask(__name__)
session = requests.Session()
URLS = {"openai_chat": os.environ["OPENAI_BASE_URL"] + "/chat/completions",
        "openai_embedding": os.environ["OPENAI_BASE_URL"] + "/embeddings",
        "jina_embedding": os.environ["JINA_BASE_URL"] + "/embeddings"}


@app.get("/api/proxy/health")
def health():
    return jsonify({"success": True})


@app.post("/api/proxy/external")
def external():
    body = request.get_json()
    answer = session.post(URLS[body["target_service"]], json=body["payload"], timeout=(5, 300),
                          headers={"Authorization": "Bearer " + body["api_key"]})
    return jsonify({"success": True, "data": answer.json(), "requestId": "req"}), answer.status_code
