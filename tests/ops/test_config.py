"""The settings table: validation with one-line errors, `cycles config` with
secrets masked, and docs/configuration.md equal to the table."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import cli
from app.config import MASK, OTHER_VARIABLES, SETTINGS, ConfigError, Settings, mask_url
from app.config_doc import BEGIN, END, reference_markdown
from tests.server import ROOT

CYCLES = ROOT / ".venv" / "bin" / "cycles"


@pytest.mark.parametrize(("env", "message"), [
    ({"CYCLES_PORT": "http"}, "CYCLES_PORT must be an integer, got 'http'"),
    ({"CYCLES_PORT": "70000"}, "CYCLES_PORT must be from 1 to 65535, got 70000"),
    ({"CYCLES_WORKERS": "0"}, "CYCLES_WORKERS must be from 1 to 256, got 0"),
    ({"CYCLES_LOCK_TIMEOUT_MS": "-1"}, "CYCLES_LOCK_TIMEOUT_MS must be from 0 to 3600000, got -1"),
    ({"CYCLES_LOG_FORMAT": "xml"}, "CYCLES_LOG_FORMAT must be one of auto, json, text, got 'xml'"),
    ({"CYCLES_LOG_LEVEL": "loud"}, "CYCLES_LOG_LEVEL must be one of debug, info, warning, error, critical, got 'loud'"),
    ({"CYCLES_METRICS_ENABLED": "perhaps"}, "CYCLES_METRICS_ENABLED must be true or false, got 'perhaps'"),
    ({"CYCLES_POOL_MIN_SIZE": "6", "CYCLES_POOL_MAX_SIZE": "3"},
     "CYCLES_POOL_MIN_SIZE (6) must not exceed CYCLES_POOL_MAX_SIZE (3)"),
    ({"CYCLES_METRICS_TENANT_LABEL": "true"},
     "CYCLES_METRICS_TENANT_LABEL=true needs CYCLES_METRICS_TOKEN (tenant ids on /metrics)"),
])
def test_bad_values_are_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert str(raised.value) == message


def test_values_are_parsed_and_defaults_computed() -> None:
    settings = Settings.from_env({
        "CYCLES_PORT": " 8080 ", "CYCLES_DEV_MODE": "YES", "CYCLES_LOG_LEVEL": "WARNING", "CYCLES_WORKERS": "4",
        "CYCLES_DATA_DIR": "/srv/cycles", "CYCLES_HOST": ""})
    assert settings.port == 8080 and settings.dev_mode is True and settings.log_level == "warning"
    assert settings.data_dir == Path("/srv/cycles") and settings.host == "127.0.0.1"
    cores = os.cpu_count() or 2
    assert settings.pool_max_size == max(2, 4 * cores // 4)
    assert settings.pool_min_size == min(2, settings.pool_max_size)
    assert Settings.from_env({}).workers == max(1, cores // 2)


def test_every_field_is_one_table_entry() -> None:
    assert [entry.name for entry in SETTINGS] == [item.name for item in dataclasses.fields(Settings)]
    names = [entry.spec.env for entry in SETTINGS]
    assert len(set(names)) == len(names) and all(name.startswith("CYCLES_") for name in names)
    assert not set(names) & set(OTHER_VARIABLES)


def test_every_variable_the_code_reads_is_declared() -> None:
    used = set()
    for path in (ROOT / "app").rglob("*.py"):
        used |= set(re.findall(r"\bCYCLES_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    declared = {entry.spec.env for entry in SETTINGS} | set(OTHER_VARIABLES)
    assert used - declared == set()


def test_configuration_doc_is_the_table() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert BEGIN in doc and END in doc
    generated = doc[doc.index(BEGIN):doc.index(END) + len(END)] + "\n"
    assert generated == reference_markdown(), "regenerate with: .venv/bin/python -m app.config_doc"


def test_cycles_config_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "CYCLES_ADMIN_API_KEY": "cyc_admin_very-secret-admin-key",
        "CYCLES_METRICS_TOKEN": "scrape-token-secret",
        "CYCLES_DATABASE_URL": "postgresql://cycles:db-password-secret@db.example:5432/cycles",
    }
    for name, secret in secrets.items():
        monkeypatch.setenv(name, secret)
    monkeypatch.setenv("CYCLES_PORT", "9999")
    table = CliRunner().invoke(cli, ["config"])
    assert table.exit_code == 0, table.output
    assert f"postgresql://cycles:{MASK}@db.example:5432/cycles" in table.output
    assert re.search(r"CYCLES_PORT\s+9999\s+\(set\)", table.output)
    listed = json.loads(CliRunner().invoke(cli, ["config", "--format", "json"]).output)
    by_name = {row["variable"]: row for row in listed}
    assert by_name["CYCLES_ADMIN_API_KEY"] == {
        "variable": "CYCLES_ADMIN_API_KEY", "value": MASK, "source": "environment", "secret": True}
    assert by_name["CYCLES_PORT"]["value"] == 9999 and by_name["CYCLES_DEV_MODE"]["value"] is False
    assert by_name["CYCLES_METRICS_TOKEN"]["value"] == MASK
    for output in (table.output, json.dumps(listed)):
        for secret in ("very-secret-admin-key", "scrape-token-secret", "db-password-secret"):
            assert secret not in output


def test_database_url_masking() -> None:
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert mask_url("postgresql://u:p@h/db?password=q&sslmode=require") == (
        f"postgresql://u:{MASK}@h/db?password={MASK}&sslmode=require")
    assert mask_url("host=/tmp dbname=cycles password='a b c' user=u") == (
        f"host=/tmp dbname=cycles password={MASK} user=u")


@pytest.mark.parametrize("command", [["serve"], ["config"]])
def test_commands_exit_non_zero_with_one_line(command: list[str]) -> None:
    result = subprocess.run(
        [str(CYCLES), *command], env={**os.environ, "CYCLES_WORKERS": "0"}, capture_output=True, text=True,
        timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr == "cycles: error: CYCLES_WORKERS must be from 1 to 256, got 0\n"
