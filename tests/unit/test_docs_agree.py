"""The docs and the code agree on the names a user types or greps for: every flag of whctl and
whplane is in docs/whctl.md, every WH_* environment variable the code reads is documented and
every one the docs name is read, every metric the code registers is documented and every one
the docs name exists. A rename on either side fails here, naming what to fix."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer

from cli import whctl, whplane

ROOT = Path(__file__).resolve().parents[2]
CODE = [p for d in ("providers", "data_plane", "control_plane", "cli")
        for p in (ROOT / d).rglob("*.py")]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Not settings of a server: read by the examples only; the placeholder of "flag --FIELD or
# WH_FIELD"; design.md section 7's option for test containers, which the suite does not need.
NOT_SETTINGS = {"WH_EXAMPLES_OUT", "WH_FIELD", "WH_TEST_CONTAINERS"}


def _text(paths: list[Path]) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in paths)


def _options(command: click.Command, path: str) -> Iterator[tuple[str, str]]:
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            for opt in (*param.opts, *param.secondary_opts):
                if opt.startswith("--") and opt not in ("--help", "--install-completion",
                                                        "--show-completion"):
                    yield path, opt
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _options(sub, f"{path} {name}")


@pytest.mark.parametrize("app", [whctl.app, whplane.app], ids=["whctl", "whplane"])
def test_every_flag_is_documented(app: typer.Typer) -> None:
    page = (ROOT / "docs" / "whctl.md").read_text(encoding="utf-8")
    name = "whctl" if app is whctl.app else "whplane"
    missing = sorted({f"{path}: {opt}" for path, opt in _options(typer.main.get_command(app), name)
                      if not re.search(rf"{re.escape(opt)}(?![\w-])", page)})
    assert not missing, f"flags missing from docs/whctl.md: {missing}"


def _env_in_code() -> set[str]:
    from control_plane.canary import CanarySettings
    from control_plane.settings import ControlPlaneSettings
    from data_plane.settings import GatewaySettings

    names = set()
    for settings in (GatewaySettings, ControlPlaneSettings, CanarySettings):
        prefix = settings.model_config.get("env_prefix", "")
        for field, info in settings.model_fields.items():
            alias = info.validation_alias
            names.add((alias if isinstance(alias, str) else f"{prefix}{field}").upper())
    for path in CODE:
        names |= set(re.findall(r"[\"'](WH_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text()))
    return names - NOT_SETTINGS


def _env_in_docs() -> set[str]:
    text = _text(PAGES)
    return {n for n in re.findall(r"\bWH_[A-Z0-9_]*[A-Z0-9]\b", text)} - NOT_SETTINGS


def test_every_environment_variable_read_is_documented() -> None:
    missing = sorted(_env_in_code() - _env_in_docs())
    assert not missing, f"read by the code, documented nowhere in README.md or docs/: {missing}"


def test_every_environment_variable_documented_is_read() -> None:
    unknown = sorted(_env_in_docs() - _env_in_code())
    assert not unknown, f"named in the docs, read by no code: {unknown}"


def _metric(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count|created)$", "", name)


def test_metrics_in_code_and_docs_are_the_same() -> None:
    code = {_metric(n) for p in CODE
            for n in re.findall(r"[\"'](whplane_[a-z0-9_]+)[\"']", p.read_text())}
    # Not after a `/`: /run/secrets/whplane_admin_token is a file, not a metric.
    docs = {_metric(n) for n in re.findall(r"(?<![/\w])whplane_[a-z0-9_]+\b", _text(PAGES))}
    assert not sorted(code - docs), f"registered, documented nowhere: {sorted(code - docs)}"
    assert not sorted(docs - code), f"documented, registered nowhere: {sorted(docs - code)}"
