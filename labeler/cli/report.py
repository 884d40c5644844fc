"""`labeler report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labeler.cli.app import (
    DatasetOption,
    DbOption,
    FlaggedOption,
    JsonOption,
    LimitOption,
    MaxConfidenceOption,
    MaxPAcceptOption,
    MinConfidenceOption,
    MinPAcceptOption,
    ModelOption,
    PathOption,
    ReviewOption,
    SettingsOption,
    SortOption,
    StaleOption,
    app,
    console,
    draft_filter,
    open_store_for,
    print_json,
    progress,
)  # fmt: skip


@app.command("report")
def report_cli(
    output: Annotated[Path, typer.Option("--output", "-o", help="The index file to write.")],
    dataset: DatasetOption = None,
    model: ModelOption = None,
    settings: SettingsOption = None,
    min_confidence: MinConfidenceOption = None,
    max_confidence: MaxConfidenceOption = None,
    min_p_accept: MinPAcceptOption = None,
    max_p_accept: MaxPAcceptOption = None,
    review: ReviewOption = None,
    flagged: FlaggedOption = None,
    path: PathOption = None,
    include_stale: StaleOption = False,
    limit: LimitOption = None,
    sort: SortOption = "p_accept",
    n_best: Annotated[int, typer.Option(help="Drafts shown per image, the best included.")] = 3,
    per_page: Annotated[int, typer.Option(help="Drafts per page.")] = 200,
    thumb_size: Annotated[int, typer.Option(help="Thumbnail size in pixels; 0: none.")] = 160,
    workers: Annotated[
        int | None, typer.Option(help="Thumbnail processes; 0: inline; default: cores.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing report.")] = False,
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Write an HTML gallery of the drafts, worst p_accept first, with charts.

    The index (-o) links to pages in a folder beside it (report_files/ for report.html).
    The report opens offline; an existing one is kept unless --force.
    """
    from labeler.report import write_report

    spec = draft_filter(
        dataset=dataset, model=model, settings=settings, min_confidence=min_confidence,
        max_confidence=max_confidence, min_p_accept=min_p_accept, max_p_accept=max_p_accept,
        review=review, flagged=flagged, path=path, include_stale=include_stale, limit=limit,
    )  # fmt: skip
    store = open_store_for(db, create=False)
    with progress("Writing report", json_output) as report:
        result = write_report(
            store, output, spec=spec, sort=sort, n_best=n_best, per_page=per_page,
            thumb_size=thumb_size, workers=workers, force=force,
            progress=lambda p: report(p.done, f"{p.placeholders} without preview", p.total),
        )  # fmt: skip
    missing = sum(result.placeholders.values())
    if json_output:
        print_json({
            "index": str(result.index), "folder": str(result.folder), "pages": len(result.pages),
            "drafts": result.drafts, "thumbnails": result.thumbnails,
            "placeholders": dict(result.placeholders), "elapsed_s": round(result.elapsed_s, 3),
            "removed": result.removed, "removed_bytes": result.removed_bytes,
        })  # fmt: skip
        return
    if result.removed:
        plural = "s" if result.removed != 1 else ""
        console.print(f"removed {result.removed} leftover staging folder{plural} or file{plural} "
                      f"({result.removed_bytes / 1e6:.1f} MB) of killed reports")  # fmt: skip
    console.print(
        f"{result.drafts} drafts in {len(result.pages)} pages, {result.thumbnails} thumbnails"
        + (f", {missing} without preview" if missing else "")
        + f", {result.elapsed_s:.1f} s: open {result.index}",
        markup=False,
    )
