"""Operations over real processes: graceful shutdown, metrics across workers, each way to run."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import FAKE_KEY
from tests.e2e.conftest import REPO, RunningService, base_urls, free_port


def body(**payload):
    return {"target_service": "openai_chat", "api_key": FAKE_KEY, "payload": payload}


def wait_for_health(url: str, proc: subprocess.Popen, log: Path, seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return requests.get(f"{url}/api/proxy/health", timeout=1).json()
        except requests.ConnectionError:
            time.sleep(0.1)
    pytest.fail(f"no answer from {url}; log:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_sigterm_finishes_the_call_in_flight_and_refuses_new_connections(
        upstream, tmp_path, worker_class):
    service = RunningService(tmp_path, {**base_urls(upstream.url), "UPSTREAM_READ_TIMEOUT": "10",
                                        "GUNICORN_WORKER_CLASS": worker_class})
    answer = {}
    call = threading.Thread(target=lambda: answer.update(
        response=service.post(body(stub="slow", delay=2))))
    call.start()
    time.sleep(0.5)  # the provider call is under way
    service.proc.send_signal(signal.SIGTERM)
    term = time.monotonic()

    refused_after = None
    while time.monotonic() - term < 1.5 and refused_after is None:
        try:
            socket.create_connection(("127.0.0.1", service.port), timeout=0.2).close()
            time.sleep(0.05)
        except ConnectionRefusedError:
            refused_after = time.monotonic() - term
    call.join()
    service.proc.wait(timeout=30)
    exited_after = time.monotonic() - term

    assert refused_after is not None, "new connections were still accepted 1.5 s into shutdown"
    assert answer["response"].status_code == 200
    assert service.proc.returncode == 0
    # gunicorn's graceful_timeout is 25 s; the master kills what is left then. gthread exits as
    # soon as the call is done; a gevent worker also waits for idle client connections.
    assert exited_after < (5 if worker_class == "gthread" else 27)
    assert FAKE_KEY not in service.log()


def metric(text: str, name: str, **labels) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{label_text}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_metrics_add_up_across_workers(upstream, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    service = RunningService(tmp_path / "svc", {**base_urls(upstream.url), "WEB_CONCURRENCY": "3",
                                                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        payloads = [body(stub="json")] * 8 + [body(stub="status", status=429)] * 2

        def send(chunk):
            for payload in chunk:  # a new connection each time: spread over the workers
                requests.post(f"{service.url}/api/proxy/external", json=payload, timeout=10,
                              headers={"Connection": "close"})

        def pids():
            return {int(m.group(1)) for f in metrics_dir.glob("counter_*.db")
                    if (m := re.match(r"counter_(\d+)\.db", f.name))}

        rounds = 0
        # Which worker accepts is the kernel's choice (a busy machine may leave it to one for
        # a while): send rounds of 10 until two workers have answered, 10 rounds at most.
        while rounds < 10 and (rounds < 3 or len(pids()) < 2):
            threads = [threading.Thread(target=send, args=(payloads[i::5],)) for i in range(5)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rounds += 1
        time.sleep(0.3)

        assert len(pids()) >= 2, "the requests did not spread over several workers"
        for _ in range(3):  # each scrape may land on any worker; every one sees the same sums
            text = requests.get(f"{service.url}/metrics", timeout=5).text
            assert metric(text, "byok_proxy_requests_total", service="openai_chat", model="none",
                          status="200") == 8 * rounds
            assert metric(text, "byok_proxy_requests_total", service="openai_chat", model="none",
                          status="429") == 2 * rounds
            assert metric(text, "byok_proxy_upstream_errors_total", service="openai_chat",
                          code="EXTERNAL_SERVICE_ERROR") == 2 * rounds
            assert metric(text, "byok_proxy_request_duration_seconds_count",
                          service="openai_chat", model="none") == 10 * rounds
            assert metric(text, "byok_proxy_requests_in_flight") == 0
            assert FAKE_KEY not in text
    finally:
        service.stop()


def test_procfile_web_line_runs_under_honcho(tmp_path):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "WEB_CONCURRENCY": "1",
           "XDG_RUNTIME_DIR": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("GUNICORN_CMD_ARGS", None)
    log = tmp_path / "honcho.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "honcho", "start", "-f", "Procfile", "web"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        data = wait_for_health(f"http://127.0.0.1:{port}", proc, log)["data"]
        assert data["status"] == "healthy" and data["version"]
    finally:
        stop(proc)


def test_flask_run_serves_the_same_routes(tmp_path):
    port = free_port()
    log = tmp_path / "flask.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(port)],
            cwd=REPO, env={**os.environ, "ENVIRONMENT": "development"}, stdout=out,
            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_health(url, proc, log)["success"] is True
        assert requests.get(f"{url}/api/proxy/services", timeout=5).json()["data"]["count"] == 23
        assert requests.get(f"{url}/nowhere", timeout=5).json()["error"]["code"] == "NOT_FOUND"
        assert "byok_proxy_requests_total" in requests.get(f"{url}/metrics", timeout=5).text
        missing_key = requests.post(f"{url}/api/proxy/external", timeout=5,
                                    json={"target_service": "openai_chat", "payload": {}})
        assert missing_key.json()["error"]["code"] == "MISSING_API_KEY"
    finally:
        stop(proc)


def test_systemd_unit_verifies(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    # The unit as installed, with the paths of this checkout instead of /opt/byok-proxy.
    unit = (REPO / "deploy" / "byok-proxy.service").read_text()
    unit = unit.replace("/opt/byok-proxy/.venv/bin/gunicorn", str(Path(sys.executable).parent /
                                                                  "gunicorn"))
    unit = unit.replace("/opt/byok-proxy", str(REPO)).replace("User=byok", "User=root")
    unit = unit.replace("Group=byok", "Group=root")
    path = tmp_path / "byok-proxy.service"
    path.write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "byok-proxy.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_nginx_site_parses(tmp_path):
    if not shutil.which("nginx") or not shutil.which("openssl"):
        pytest.skip("nginx or openssl is not installed (.ci/run installs nginx)")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=proxy.example.com", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True,
                   timeout=60)
    site = (REPO / "deploy" / "nginx-byok-proxy.conf").read_text()
    site = site.replace("/etc/letsencrypt/live/proxy.example.com/fullchain.pem",
                        str(tmp_path / "cert.pem"))
    site = site.replace("/etc/letsencrypt/live/proxy.example.com/privkey.pem",
                        str(tmp_path / "key.pem"))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ include {tmp_path}/site.conf; }}\n")
    result = subprocess.run(["nginx", "-t", "-c", str(tmp_path / "nginx.conf"), "-p",
                             str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
