"""Start and measure the real service under gunicorn, for the bench scripts (loopback only)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port` within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the processes `pids` (threads included), from /proc/<pid>/stat; a
    process gone since counts nothing."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def base_url_env(root: str) -> dict[str, str]:
    return {"OPENAI_BASE_URL": f"{root}/v1", "ANTHROPIC_BASE_URL": root,
            "JINA_BASE_URL": f"{root}/v1", "CO_API_URL": root}


class Service:
    """gunicorn on 127.0.0.1 with the Procfile's config (or `args`), settings at their defaults
    unless `env` says otherwise; the code of `repo` (another checkout, to compare) under the
    interpreter `python` (another build, to compare), run under `wrapper` (valgrind, to count
    instructions) when given."""

    def __init__(self, env: dict[str, str], app: str = "app:app",
                 args: tuple[str, ...] = ("-c", "gunicorn.conf.py"), repo: Path = REPO,
                 python: str = sys.executable, wrapper: tuple[str, ...] = (),
                 start_seconds: float = 20) -> None:
        self.app, self.repo = app, repo
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="bench-")
        self.log_path = Path(self._dir.name) / "service.log"
        full_env = {**os.environ, "XDG_RUNTIME_DIR": self._dir.name, **env}
        full_env.pop("GUNICORN_CMD_ARGS", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*wrapper, python, "-m", "gunicorn", *args, "-b",
                 f"127.0.0.1:{self.port}", app],
                cwd=repo, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_seconds
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/api/proxy/health", timeout=1)
                time.sleep(1)  # let every worker finish booting
                return
            except OSError:
                time.sleep(0.1)
        log = self.log_path.read_text()[-2000:]
        self.stop()
        raise RuntimeError("service did not start:\n" + log)

    def __repr__(self) -> str:
        return f"{self.app} at {self.repo}"

    def pids(self) -> list[int]:
        """The master and its workers."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [self.proc.pid, *map(int, children.read_text().split())]

    def memory_mb(self) -> float:
        """Proportional set size of the master and workers: each shared page counted once,
        where summing RSS would count the pages workers share with the master in each."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            except FileNotFoundError:
                pass
        return total / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU of the master and workers."""
        return cpu_seconds(self.pids())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._dir.cleanup()
