"""The compose file validates with the Compose CLI where one is installed (apt-get install docker-compose)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return None


@pytest.mark.skipif(compose_command() is None, reason="no docker compose CLI on this machine")
def test_compose_file_validates_and_requires_its_secrets():
    command = compose_command()
    env = {**os.environ, "POSTGRES_PASSWORD": "example"}
    ok = subprocess.run([*command, "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    env.pop("POSTGRES_PASSWORD")
    missing = subprocess.run([*command, "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert missing.returncode != 0
    assert "POSTGRES_PASSWORD" in missing.stderr


def test_compose_services_and_dockerfile_use_the_service_cli():
    compose = (ROOT / "docker-compose.yml").read_text()
    for service in (
        "postgres:",
        "migrate:",
        "api:",
        "worker:",
        "healthcheck:",
        "service_completed_successfully",
    ):
        assert service in compose
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in dockerfile and '"torch==2.13.0"' in dockerfile
