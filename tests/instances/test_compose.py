"""The container files: docker-compose.yml validated by Debian's
docker-compose (installed with apt-get when missing; there is no Docker
daemon here, so nothing is built or run) and checked structurally, and the
Dockerfile and .dockerignore checked for what the image must have."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from app.cli import cli

ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SECRETS = {"POSTGRES_PASSWORD": "pw" + "0" * 30, "CYCLES_ADMIN_API_KEY": "cyc_admin_" + "k" * 40}


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("docker-compose is not installed and cannot be installed here (needs root and apt-get)")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "docker-compose"]
    if subprocess.run(install, env=environment, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=environment, check=True)
        subprocess.run(install, env=environment, check=True)
    found = shutil.which("docker-compose")
    assert found is not None
    return found


def compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([docker_compose(), "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, capture_output=True,
                          text=True, env={**environment, **env}, timeout=60, check=False)


def test_docker_compose_accepts_the_file_and_demands_the_secrets() -> None:
    valid = compose_config(**SECRETS)
    assert valid.returncode == 0, valid.stderr
    for missing in SECRETS:
        refused = compose_config(**{k: v for k, v in SECRETS.items() if k != missing})
        assert refused.returncode != 0
        assert f"set {missing}" in refused.stderr


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def test_compose_services_healthchecks_volumes() -> None:
    document = _compose()
    services = document["services"]
    assert set(services) == {"postgres", "server", "worker"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        assert service.get("restart") == "unless-stopped", name
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "postgres-data" in document["volumes"]
    server, worker = services["server"], services["worker"]
    assert server["command"] == ["serve"] and worker["command"] == ["worker"]
    assert server["image"] == worker["image"]
    # The worker delivers webhooks; the server does not.
    assert server["environment"]["CYCLES_WEBHOOKS_DISABLED"] == "true"
    assert "CYCLES_WEBHOOKS_DISABLED" not in worker["environment"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["server"]["condition"] == "service_healthy"
    assert any("/ready" in part for part in server["healthcheck"]["test"])
    # Published on loopback only.
    assert all(port.startswith("127.0.0.1:") for port in server["ports"])
    # The healthcheck programs are valid Python.
    for service in (server, worker):
        test = service["healthcheck"]["test"]
        compile(test[test.index("-c") + 1], "healthcheck", "exec")


def test_compose_holds_no_secret_literals() -> None:
    document = _compose()
    for name, service in document["services"].items():
        for variable, value in service["environment"].items():
            if re.search(r"PASSWORD|KEY|SECRET", variable):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), (name, variable, value)
            if variable.endswith("DATABASE_URL"):
                password = re.match(r"postgresql://[^:]+:([^@]+)@", str(value))
                assert password is not None and password.group(1).startswith("${"), (name, value)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/") or path == pattern
               for pattern in patterns)


def test_dockerfile_builds_a_small_non_root_image_serving_with_a_readiness_check() -> None:
    instructions = _dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    values = dict(instructions)  # the last of each keyword
    assert values["USER"] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert json.loads(values["ENTRYPOINT"]) == ["cycles"] and json.loads(values["CMD"]) == ["serve"]
    healthcheck = values["HEALTHCHECK"]
    assert "/ready" in healthcheck
    program = json.loads(healthcheck[healthcheck.index("CMD") + 3:])
    compile(program[program.index("-c") + 1], "healthcheck", "exec")
    assert "CYCLES_HOST=0.0.0.0" in values["ENV"]

    # Every COPY source exists and is sent to the builder (not ignored).
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for keyword, rest in instructions:
        if keyword == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not _ignored(source.rstrip("/"), patterns), source
    for needed_out in (".venv", ".git", "tests", "bench"):
        assert _ignored(needed_out, patterns), needed_out


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_the_image_commands_exist(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
