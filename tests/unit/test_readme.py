"""README.md stays true: generated references match the code, commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from streamproc import settings_doc
from streamproc.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_configuration_reference_matches_the_settings_model() -> None:
    assert settings_doc.embed(README) == README, (
        "README configuration table drifted: python -m streamproc.settings_doc --write README.md")


def test_quick_start_commands_exist_and_ci_runs_the_readme_test_command() -> None:
    assert "./quickstart demo" in README
    assert "./quickstart test" in README
    quickstart = (ROOT / "quickstart").read_text()
    assert "python -m pytest" in quickstart
    assert "streamproc demo" in quickstart
    assert "./quickstart test" in (ROOT / ".ci" / "run").read_text()


def test_every_documented_cli_command_exists() -> None:
    documented = set(re.findall(r"^\| `streamproc (\w+)", README, flags=re.MULTILINE))
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert documented
    assert documented <= set(sub.choices), documented - set(sub.choices)


def test_linked_files_exist() -> None:
    for link in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (ROOT / link).exists(), link
