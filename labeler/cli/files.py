"""`labeler scan`, `labeler datasets` and `labeler datasets move`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from labeler.cli.app import (
    DbOption,
    JsonOption,
    app,
    console,
    open_store_for,
    print_json,
    progress,
)  # fmt: skip


@app.command("scan")
def scan_cli(
    paths: Annotated[list[Path], typer.Argument(help="Folders (or files) to scan.")],
    dataset: Annotated[
        str | None, typer.Option(help="Dataset name; default: each folder's name.")
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="Only files matching this glob (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Skip files and folders matching this glob.")
    ] = None,
    hidden: Annotated[bool, typer.Option(help="Include hidden files and folders.")] = False,
    follow_symlinks: Annotated[
        bool, typer.Option(help="Follow symbolic links (never in a loop).")
    ] = False,
    max_pixels: Annotated[
        int | None,
        typer.Option(help="Images with more pixels are 'too_large' (decompression bombs)."),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Reader processes; default: cores.")] = None,
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Register every image under PATHS: what it is and whether it can be read.

    A re-scan reads only files whose size or modification time changed; vanished files are
    marked missing, never deleted.
    """
    from labeler.files import decode
    from labeler.files.scan import scan

    store = open_store_for(db)
    with progress("Scanning", json_output) as report:
        result = scan(
            store,
            paths,
            dataset=dataset,
            include=include or (),
            exclude=exclude or (),
            hidden=hidden,
            follow_symlinks=follow_symlinks,
            max_pixels=max_pixels or decode.DEFAULT_MAX_PIXELS,
            workers=workers,
            progress=lambda p: report(p.files, f"{p.read} read, {p.unchanged} unchanged"),
        )
    if json_output:
        print_json(_scan_json(result))
        return
    _render_scan(result)


datasets_app = typer.Typer(no_args_is_help=False)
app.add_typer(datasets_app, name="datasets")


@datasets_app.callback(invoke_without_command=True)
def datasets_cli(ctx: typer.Context, db: DbOption = None, json_output: JsonOption = False) -> None:
    """List the datasets in the store with their images counted by status.

    `labeler datasets move NAME NEW_ROOT` points a dataset at the folder it moved to.
    """
    if ctx.invoked_subcommand is not None:
        return
    from labeler.store import images as image_store
    from labeler.store.models import IMAGE_STATUSES

    store = open_store_for(db, create=False)
    with store.session() as session:
        counts = image_store.status_counts(session)
    if json_output:
        print_json([{"name": n, "images": sum(c.values()), **dict(c)} for n, c in counts.items()])
        return
    table = Table("dataset", "images", *IMAGE_STATUSES)
    for name, by_status in counts.items():
        cells = [str(by_status.get(s, 0)) for s in IMAGE_STATUSES]
        table.add_row(name, str(sum(by_status.values())), *cells)
    console.print(table)


@datasets_app.command("move")
def move_cli(
    name: Annotated[str, typer.Argument(help="The dataset to move.")],
    new_root: Annotated[Path, typer.Argument(help="The folder its images are in now.")],
    dry_run: Annotated[
        bool, typer.Option(help="Check the files and report; change nothing.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Move even when no file matches.")] = False,
    workers: Annotated[int | None, typer.Option(help="Hashing processes; default: cores.")] = None,
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Point dataset NAME at NEW_ROOT, keeping its image ids, drafts and reviews.

    Every image is checked at NEW_ROOT by relative path, size and content hash; those that did
    not match are reported, and the next `labeler scan NAME NEW_ROOT` marks them changed or
    missing.
    """
    from labeler.files.relocate import move_dataset

    store = open_store_for(db, create=False)
    with progress("Checking", json_output) as report:
        result = move_dataset(
            store, name, new_root, dry_run=dry_run, force=force, workers=workers,
            progress=lambda done, total: report(done, total=total),
        )  # fmt: skip
    if json_output:
        print_json(_move_json(result))
        return
    _render_move(result)


def _scan_json(result) -> dict:  # type: ignore[no-untyped-def]
    return {
        "datasets": result.datasets,
        "files": result.files,
        "new": result.new,
        "changed": result.changed,
        "unchanged": result.unchanged,
        "missing": result.missing,
        "stale_drafts": result.stale_drafts,
        "by_status": dict(result.by_status),
        "skipped": dict(result.skipped),
        "duplicates": result.duplicates,
        "duplicate_examples": result.duplicate_examples,
        "elapsed_s": round(result.elapsed_s, 3),
    }


def _render_scan(result) -> None:  # type: ignore[no-untyped-def]
    table = Table("status", "files", title=f"Scanned {', '.join(result.datasets)}")
    for status, n in sorted(result.by_status.items()):
        table.add_row(status, str(n))
    console.print(table)
    rate = result.files / result.elapsed_s if result.elapsed_s else 0.0
    console.print(
        f"{result.files} files in {result.elapsed_s:.1f} s ({rate:.0f}/s): {result.new} new, "
        f"{result.changed} changed, {result.unchanged} unchanged, {result.missing} missing"
    )
    if result.stale_drafts:
        console.print(f"{result.stale_drafts} drafts marked stale (their image changed)")
    if result.duplicates:
        example = " = ".join(result.duplicate_examples[0]) if result.duplicate_examples else ""
        console.print(
            f"{result.duplicates} files repeat the content of another (captioned once), "
            f"e.g. {example}",
            markup=False,
        )
    if result.skipped:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items()))
        console.print(f"Passed over: {skipped}", markup=False)


def _move_json(result) -> dict:  # type: ignore[no-untyped-def]
    from labeler.files.relocate import OUTCOMES

    return {
        "dataset": result.dataset,
        "old_root": result.old_root,
        "new_root": result.new_root,
        "moved": result.moved,
        "checked": result.checked,
        **{outcome: getattr(result, outcome) for outcome in OUTCOMES},
        "unchecked": result.unchecked,
        "examples": {
            outcome: [{"path": e.path, "reason": e.reason} for e in examples]
            for outcome, examples in result.examples.items()
        },
        "bytes_hashed": result.bytes_hashed,
        "elapsed_s": round(result.elapsed_s, 3),
    }


def _render_move(result) -> None:  # type: ignore[no-untyped-def]
    def say(text: str) -> None:  # paths are never wrapped, so they can be copied
        console.print(text, markup=False, soft_wrap=True)

    rate = result.checked / result.elapsed_s if result.elapsed_s else 0.0
    say(
        f"{result.checked} images checked in {result.elapsed_s:.1f} s ({rate:.0f}/s, "
        f"{result.bytes_hashed / 1e6:.1f} MB hashed)"
    )
    say(
        f"{result.matched} matched, {result.changed} changed, {result.missing} missing, "
        f"{result.unreadable} unreadable"
    )
    if result.unchecked:
        say(f"{result.unchecked} images not checked (missing or never read)")
    for outcome, examples in result.examples.items():
        say(f"{outcome}, e.g. " + "; ".join(f"{e.path} ({e.reason})" for e in examples))
    if result.moved:
        say(f"Moved '{result.dataset}' from {result.old_root} to {result.new_root}")
        if result.checked != result.matched:
            say("Run labeler scan on it to record the files that did not match")
    elif result.checked and not result.matched:
        say("Dry run, nothing changed: no file matched, so the move needs --force")
    else:
        say("Dry run, nothing changed")
