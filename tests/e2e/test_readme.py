"""The README's curl examples work against the running service and a stand-in provider."""
import json
import re
from pathlib import Path

import pytest
import requests

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
BODIES = [json.loads(b) for b in re.findall(r"curl -s localhost:8000/api/proxy/external .* -d '(.+)'", README)]


def test_readme_has_one_example_per_service():
    from config import SERVICES
    assert sorted(b["target_service"] for b in BODIES) == sorted(SERVICES)


@pytest.mark.parametrize("example", BODIES, ids=[b["target_service"] for b in BODIES])
def test_readme_example_answers(service, upstream, example):
    response = service.post(example)
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True


@pytest.mark.parametrize("path", ["/api/proxy/health", "/api/proxy/services"])
def test_readme_get_routes_answer(service, path):
    assert service.get(path).json()["success"] is True


def test_readme_shows_the_systemd_unit_of_deploy():
    unit = (Path(__file__).resolve().parents[2] / "deploy" / "byok-proxy.service").read_text()
    assert "```ini\n" + unit + "```" in README
