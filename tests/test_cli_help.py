"""Every command's help fits an 80-column terminal whole: no option name or word cut short."""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from labeler.cli import app

runner = CliRunner()


def _commands(command, path: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    yield path, command
    if hasattr(command, "commands"):  # a group
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


def test_help_at_80_columns_shows_every_option_name_in_full():
    checked = 0
    for path, command in _commands(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        lines = result.output.splitlines()
        assert all(len(line) <= 80 for line in lines), (path, max(lines, key=len))
        assert "…" not in result.output, (path, result.output)
        words = set(result.output.replace(",", " ").replace("/", " ").split())
        for param in command.params:
            for name in (*param.opts, *param.secondary_opts):
                if name.startswith("-"):
                    assert name in words, (path, name)
        checked += 1
    assert checked >= 12  # the app, its commands and their subcommands
