"""Render the configuration reference (a Markdown table) from the settings model.

README.md embeds the table between ``<!-- settings:start -->`` and
``<!-- settings:end -->``; tests/unit/test_readme.py fails when it drifts.
Regenerate with ``python -m streamproc.settings_doc --write README.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, SecretStr

from streamproc.settings import Settings, env_var_name

START = "<!-- settings:start -->"
END = "<!-- settings:end -->"


def _default(value: object) -> str:
    if value is None:
        return "*(unset)*"
    if isinstance(value, SecretStr):
        return "*(secret)*"
    return f"`{value}`"


def render() -> str:
    """The table: one row per environment variable."""
    rows = ["| Variable | Default | Description |", "|---|---|---|"]
    for group_name, group_field in Settings.model_fields.items():
        group = group_field.default
        if isinstance(group, BaseModel):
            for name, field in type(group).model_fields.items():
                rows.append(f"| `{env_var_name(group_name, name)}` | "
                            f"{_default(getattr(group, name))} | {field.description or ''} |")
        else:
            rows.append(f"| `{env_var_name(group_name)}` | {_default(group)} | "
                        f"{group_field.description or ''} |")
    return "\n".join(rows) + "\n"


def embed(text: str) -> str:
    """``text`` (a README) with the table between the markers replaced by the current one."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render()}{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table, or ``--write``/``--check`` a README that embeds it."""
    parser = argparse.ArgumentParser(prog="python -m streamproc.settings_doc")
    parser.add_argument("--write", type=Path)
    parser.add_argument("--check", type=Path)
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(embed(args.write.read_text()))
        return 0
    if args.check:
        text = args.check.read_text()
        if embed(text) != text:
            print(f"{args.check}: configuration table drifted; run "
                  f"python -m streamproc.settings_doc --write {args.check}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
