"""The typer app, its shared options and renderers; the commands live beside it, one module per
group, and register themselves on `app`.

Library errors (`LabelerError`) become a one-line message and exit code 1 in one place,
`_Group.invoke`. Heavy modules (torch, the scan pool) are imported inside the commands, so
`labeler --help` starts fast.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from labeler.errors import LabelerError

err_console = Console(stderr=True, highlight=False)
console = Console(highlight=False)


class _Group(TyperGroup):
    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except LabelerError as exc:
            err_console.print(f"Error: {exc}", markup=False, soft_wrap=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    help="Pre-annotate image datasets with draft captions scored by their log-likelihood.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="LABELER_DB",
        help="Store: a SQLite file or a SQLAlchemy URL (postgresql://...). Default ./labeler.db.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def open_store_for(db: str | None):  # type: ignore[no-untyped-def]
    from labeler.store import open_store

    return open_store(db)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


class progress:
    """A progress bar with a count and a rate on stderr; silent when asked or not a terminal."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label = label
        self.quiet = quiet or not err_console.is_terminal

    def __enter__(self):  # type: ignore[no-untyped-def]
        if self.quiet:
            return lambda done, note="", total=None: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(show_speed=True),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=err_console,
            transient=True,
        )
        self._bar.start()
        task = self._bar.add_task(self.label, total=None, note="")

        def report(done: int, note: str = "", total: int | None = None) -> None:
            self._bar.update(task, completed=done, total=total, note=note)

        return report

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self._bar.stop()
