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
    # click's plain help wraps every line at the terminal's width; rich's option tables cut long
    # option names and words short at 80 columns ("--no-include-st…")
    rich_markup_mode=None,
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

# The draft filters shared by export, report and stats (labeler.store.drafts.DraftFilter).
DatasetOption = Annotated[
    list[str] | None, typer.Option("--dataset", help="Only this dataset (repeatable).")
]
ModelOption = Annotated[
    str | None, typer.Option("--model", help="Model name or hash prefix; default: newest run's.")
]
SettingsOption = Annotated[
    str | None, typer.Option("--settings", help="Decoding settings key; default: newest run's.")
]
MinConfidenceOption = Annotated[float | None, typer.Option(help="Only drafts at least this.")]
MaxConfidenceOption = Annotated[float | None, typer.Option(help="Only drafts at most this.")]
MinPAcceptOption = Annotated[
    float | None, typer.Option(help="Only drafts with p_accept at least this (0 to 1).")
]
MaxPAcceptOption = Annotated[
    float | None, typer.Option(help="Only drafts with p_accept at most this (0 to 1).")
]

# The decoding options, declared once for every command that decodes (caption, evaluate); each
# None keeps the model's own default (DecodeSettings.overridden).
BeamOption = Annotated[
    int | None, typer.Option("--beam", help="Beam size; 1 is greedy. Default: the model's.")
]
MaxLenOption = Annotated[
    int | None,
    typer.Option("--max-len", help="Most decoding steps (words + end). Default: the model's."),
]
MinLenOption = Annotated[int | None, typer.Option("--min-len", help="Fewest words before the end.")]
LengthPenaltyOption = Annotated[
    float | None,
    typer.Option("--length-penalty", help="GNMT length penalty alpha; 0 ranks by log-likelihood."),
]
NBestOption = Annotated[
    int | None,
    typer.Option("--n-best", help="Drafts kept per image (<= beam). Default: the model's."),
]
BlockRepeatsOption = Annotated[
    int | None,
    typer.Option(
        "--block-repeats", help="Forbid any n-gram of this size twice (0: off; 3: trigrams)."
    ),
]
BlockUnkOption = Annotated[
    bool | None, typer.Option("--block-unk/--allow-unk", help="Never emit the unknown word.")
]


def decoding_overrides(
    *, beam: int | None = None, max_len: int | None = None, min_len: int | None = None,
    length_penalty: float | None = None, n_best: int | None = None,
    block_repeats: int | None = None, block_unk: bool | None = None,
) -> dict[str, object]:  # fmt: skip
    """The decoding options as DecodeSettings fields (None: the model's default)."""
    return {
        "beam_size": beam, "max_len": max_len, "min_len": min_len,
        "length_penalty": length_penalty, "n_best": n_best, "block_repeat_ngram": block_repeats,
        "block_unk": block_unk,
    }  # fmt: skip


def decoding_for(captioner, **options: object):  # type: ignore[no-untyped-def]
    """The decoding settings a captioner runs with: its checkpoint's own defaults, with the
    decoding options given (decoding_overrides' keywords) in their place."""
    from labeler.model.drafts import DecodeSettings

    return (captioner.decoding or DecodeSettings()).overridden(**decoding_overrides(**options))  # type: ignore[arg-type]


ReviewOption = Annotated[
    list[str] | None,
    typer.Option(help="unreviewed, reviewed, accepted, edited, rejected or skipped."),
]
FlaggedOption = Annotated[
    bool | None, typer.Option("--flagged/--not-flagged", help="Only degenerate drafts, or none.")
]
PathOption = Annotated[str | None, typer.Option(help="Only paths matching this glob (* and ?).")]
StaleOption = Annotated[bool, typer.Option(help="Include drafts of changed images.")]
LimitOption = Annotated[int | None, typer.Option(help="At most this many drafts.")]
SortOption = Annotated[
    str,
    typer.Option(
        help="p_accept (worst first), -p_accept, confidence, -confidence, margin, path or id."
    ),
]


def draft_filter(*, dataset=None, model=None, settings=None, min_confidence=None,
                 max_confidence=None, review=None, flagged=None, path=None,
                 include_stale=False, limit=None, min_p_accept=None,
                 max_p_accept=None):  # type: ignore[no-untyped-def]  # fmt: skip
    """The DraftFilter of the shared options; a p_accept bound outside [0, 1] is an
    InputError (one line, exit code 1)."""
    from labeler.store.drafts import DraftFilter

    return DraftFilter(
        datasets=dataset or None, model=model, settings_key=settings,
        min_confidence=min_confidence, max_confidence=max_confidence,
        min_p_accept=min_p_accept, max_p_accept=max_p_accept, review=review or None,
        flagged=flagged, path_glob=path, include_stale=include_stale, limit=limit,
    )  # fmt: skip


def open_store_for(db: str | None, *, create: bool = True):  # type: ignore[no-untyped-def]
    """The store of `--db`. Commands that only read (or need drafts to exist) pass
    `create=False`: a SQLite file that is not there is then a one-line error, not a new store."""
    from labeler.store import open_store

    return open_store(db, create=create)


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
