"""One typed ``Settings``, read once at the command line: every variable documented, none read below it."""

from __future__ import annotations

import ast
import re
from datetime import timedelta
from pathlib import Path

import pytest

from services.common.settings import Settings, markdown_table
from services.exchange import domain as exchange_domain

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
# The command line and its command modules read the environment (argparse defaults such as
# LIANXIN_TOKEN); the federation launcher hands its environment on to the node processes it starts.
READS_THE_ENVIRONMENT = re.compile(r"^services/(cli|federation|(\w+/)?commands)\.py$")


def test_the_operations_guide_lists_every_setting_as_settings_describes_it() -> None:
    text = OPERATIONS.read_text("utf-8")
    begin = text.index("| variable | meaning | default |")
    end = text.index("<!-- end of the generated table -->")
    assert text[begin:end] == markdown_table(), "regenerate: .venv/bin/python -m services.common.settings"


def test_nothing_below_the_command_line_reads_the_environment() -> None:
    readers = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if "migrations" in path.parts or READS_THE_ENVIRONMENT.match(relative):
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"environ", "getenv"}
                and getattr(node.value, "id", "") == "os"
            ):
                readers.append(f"{relative}:{node.lineno}")
    assert readers == [], "read the value into Settings at the command line and pass it down"


def test_each_services_section_keeps_the_variables_meaning_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"LIANXIN_{name.upper()}", raising=False)
    defaults = Settings()
    assert defaults.intake.classifier and defaults.intake.rate_limit == 5
    assert defaults.intake.rate_window == timedelta(hours=1)
    assert (defaults.intake.notice_attempts, defaults.intake.notice_first_delay) == (5, timedelta(seconds=30))
    assert defaults.intake.shared_data == ROOT.parent / "shared" / "data"
    assert defaults.routing.time_limits is None and defaults.routing.calendar_files == ()
    assert (defaults.stats.month_start_day, defaults.stats.satisfied_after_workdays) == (1, 20)
    assert defaults.exchange.batch_size == exchange_domain.BATCH_ITEMS
    assert not defaults.keys.configured and defaults.keys.environ() == {}

    monkeypatch.setenv("LIANXIN_INTAKE_CLASSIFIER", "off")
    monkeypatch.setenv("LIANXIN_INTAKE_RATE_LIMIT", "0")
    monkeypatch.setenv("LIANXIN_NOTICE_RETRY", "4/0.2")
    monkeypatch.setenv("LIANXIN_CALENDAR_FILES", "a.yaml, b.yaml,")
    monkeypatch.setenv("LIANXIN_DATA_KEYS_FILE", "/etc/lianxin/keys/data-keys")
    read = Settings()
    assert not read.intake.classifier and read.intake.rate_limit == 0
    assert (read.intake.notice_attempts, read.intake.notice_first_delay) == (4, timedelta(seconds=0.2))
    assert read.routing.calendar_files == ("a.yaml", "b.yaml")
    assert read.keys.configured and read.keys.environ() == {"LIANXIN_DATA_KEYS_FILE": "/etc/lianxin/keys/data-keys"}
    assert Settings().with_overrides(intake_classifier="off").intake.classifier is False
