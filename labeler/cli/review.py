"""`labeler export`, `labeler import`, `labeler stats`, `labeler calibrate`, `labeler report` and
`labeler serve`: the review loop."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from labeler.cli.app import (
    BeamOption,
    BlockRepeatsOption,
    BlockUnkOption,
    DatasetOption,
    DbOption,
    FlaggedOption,
    JsonOption,
    LengthPenaltyOption,
    LimitOption,
    MaxConfidenceOption,
    MaxLenOption,
    MaxPAcceptOption,
    MinConfidenceOption,
    MinLenOption,
    MinPAcceptOption,
    ModelOption,
    NBestOption,
    PathOption,
    ReviewOption,
    SettingsOption,
    SortOption,
    StaleOption,
    app,
    console,
    decoding_for,
    draft_filter,
    err_console,
    open_store_for,
    print_json,
    progress,
)  # fmt: skip


@app.command("export")
def export_cli(
    fmt: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="csv, jsonl, json, label-studio, coco, hf, sidecar or cvat."
        ),
    ],  # fmt: skip
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="File to write (sidecar: a mirror folder; default next to images).",
        ),
    ] = None,  # fmt: skip
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
    sort: SortOption = "p_accept",
    limit: LimitOption = None,
    n_best: Annotated[int, typer.Option(help="Add the alternatives up to this rank.")] = 1,
    document_root: Annotated[
        Path | None, typer.Option(help="Label Studio: LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT.")
    ] = None,
    url_prefix: Annotated[
        str | None, typer.Option(help="Label Studio: serve images under this URL instead.")
    ] = None,
    ground_truth: Annotated[
        Path | None, typer.Option(help="COCO: also write reviewed captions as ground truth.")
    ] = None,
    extension: Annotated[str, typer.Option(help="Sidecar: .txt or .caption.")] = ".txt",
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Write drafts (and their reviews) for reviewers, worst p_accept first.

    Exports are written atomically; an existing file is kept unless --force.
    """
    from labeler.review.export import export_drafts

    spec = draft_filter(
        dataset=dataset, model=model, settings=settings, min_confidence=min_confidence,
        max_confidence=max_confidence, min_p_accept=min_p_accept, max_p_accept=max_p_accept,
        review=review, flagged=flagged, path=path, include_stale=include_stale, limit=limit,
    )  # fmt: skip
    result = export_drafts(
        open_store_for(db, create=False), fmt, output, spec=spec, sort=sort, n_best=n_best,
        force=force, document_root=document_root, url_prefix=url_prefix,
        ground_truth=ground_truth, extension=extension,
    )  # fmt: skip
    if json_output:
        print_json({"count": result.count, "paths": [str(p) for p in result.paths],
                    "skipped": result.skipped, "conflicts": result.conflicts,
                    "rejected": result.rejected, "removed": result.removed,
                    "removed_bytes": result.removed_bytes})  # fmt: skip
        return
    if result.removed:
        console.print(f"removed {result.removed} leftover temporary "
                      f"file{'s' if result.removed != 1 else ''} "
                      f"({result.removed_bytes / 1e6:.1f} MB) of killed exports")  # fmt: skip
    where = ", ".join(str(p) for p in result.paths) or "next to the images"
    console.print(f"{result.count} drafts -> {where}", markup=False)
    if result.skipped or result.conflicts:
        console.print(f"{result.skipped} existing files kept (use --force), "
                      f"{result.conflicts} paths claimed twice")  # fmt: skip
    if result.rejected:
        console.print(f"{result.rejected} images whose draft was rejected got no sidecar")


@app.command("import")
def import_cli(
    file: Annotated[Path, typer.Argument(help="Reviewed CSV/JSONL/JSON or Label Studio export.")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="csv, jsonl, json, label-studio, label-studio-min, "
            "label-studio-csv; default: detected.",
        ),
    ] = None,  # fmt: skip
    reviewer: Annotated[
        str | None, typer.Option(help="Reviewer, when the file names none.")
    ] = None,
    dataset: DatasetOption = None,
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Bring reviewed captions back; a bad file changes nothing and names its line."""
    from labeler.review.importer import import_reviews

    result = import_reviews(open_store_for(db), file, fmt=fmt, reviewer=reviewer, datasets=dataset)
    if json_output:
        print_json({"source": result.source, "records": result.records, "added": result.added,
                    "updated": result.updated, "already": result.already,
                    "by_outcome": dict(result.by_outcome),
                    "matched_by": result.matched_by})  # fmt: skip
        return
    outcomes = ", ".join(f"{n} {o}" for o, n in sorted(result.by_outcome.items())) or "none"
    console.print(f"{result.added} reviews added, {result.updated} updated, {result.already} "
                  f"already imported ({outcomes})", markup=False)  # fmt: skip
    ways = result.matched_by
    console.print(f"{result.records} records matched: {ways['id']} by id, {ways['path']} by "
                  f"path, {ways['content_hash']} by content hash", markup=False)  # fmt: skip


@app.command("stats")
def stats_cli(
    dataset: DatasetOption = None,
    model: ModelOption = None,
    settings: SettingsOption = None,
    target: Annotated[
        float, typer.Option(help="Acceptance rate the suggested threshold must keep.")
    ] = 0.95,
    bins: Annotated[int, typer.Option(help="p_accept bands.")] = 10,
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Counts, a p_accept histogram and, once reviews exist, calibration against them.

    With reviews: acceptance per p_accept band against what p_accept predicted, its expected
    calibration error, the AUROC of p_accept, confidence and every raw signal, and the lowest
    p_accept that keeps the --target acceptance rate.
    """
    from labeler.review.stats import compute_stats

    spec = draft_filter(dataset=dataset, model=model, settings=settings)
    stats = compute_stats(open_store_for(db, create=False), spec=spec, bins=bins, target=target)
    if json_output:
        print_json(stats.to_dict())
        return
    _render_stats(stats)


def _render_stats(stats) -> None:  # type: ignore[no-untyped-def]
    console.print(f"Model {stats.model}, settings {stats.settings_key}: {stats.drafts} drafts, "
                  f"{stats.flagged} flagged", markup=False)  # fmt: skip
    for usage in stats.scored_by:
        console.print(f"  p_accept of {usage.drafts} drafts: {_scorer(usage)}", markup=False)
    top = max(stats.histogram or [1]) or 1
    console.print("Drafts by p_accept:")
    for band, n in zip(stats.bands, stats.histogram, strict=True):
        bar = "█" * round(30 * n / top)
        console.print(f"  {band.low:.2f}-{band.high:.2f} {bar:<30} {n}", markup=False)
    if not any(b.reviewed for b in stats.bands):
        console.print("No reviews yet: export, review, then `labeler import` to calibrate.")
        return
    table = Table("p_accept", "drafts", "reviewed", "predicted", "accepted",
                  "mean edit distance", "BLEU-4")  # fmt: skip
    for b in stats.bands:
        if b.drafts:
            table.add_row(f"{b.low:.2f}-{b.high:.2f}", str(b.drafts), str(b.reviewed),
                          _pct(b.predicted), _pct(b.acceptance), _num(b.mean_edit_distance),
                          _num(b.bleu))  # fmt: skip
    console.print(table)
    console.print(f"Expected calibration error of p_accept: {_num(stats.ece)}")
    aurocs = Table("score", "AUROC for acceptance")
    for name, value in stats.signal_auroc.items():
        aurocs.add_row(name, _num(value))
    console.print(aurocs)
    if stats.threshold is None:
        console.print(f"No p_accept threshold keeps {stats.target:.0%} acceptance.")
    else:
        console.print(f"Drafts with p_accept at or above {stats.threshold:.3f} were accepted "
                      f"unchanged at least {stats.target:.0%} of the time: {stats.passed} "
                      "drafts pass.")  # fmt: skip


def _scorer(usage) -> str:  # type: ignore[no-untyped-def]
    if usage.version is None:
        return "confidence (no calibrator)"
    fitted = "any settings" if usage.settings_key is None else f"settings {usage.settings_key}"
    return (f"calibrator v{usage.version} ({usage.source}, {fitted}, {usage.examples} examples, "
            f"cross-validated AUROC {_num(usage.auroc)})")  # fmt: skip


@app.command("calibrate")
def calibrate_cli(
    model: ModelOption = None,
    settings: SettingsOption = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds for the AUROC and ECE.")] = 5,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Fit and print; store nothing, rescore nothing.")
    ] = False,
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Refit p_accept on the reviews and rescore every draft of the model and settings.

    Fits on the best drafts that have a review (accepted unchanged against edited or
    rejected; skipped ones left out), stores the calibrator as the model's next version and
    recomputes p_accept for all its drafts with these settings, all or nothing.
    """
    from labeler.review.calibrate import calibrate

    result = calibrate(open_store_for(db, create=False), model=model, settings_key=settings,
                       folds=folds, dry_run=dry_run)  # fmt: skip
    if json_output:
        print_json(asdict(result))
        return
    console.print(f"Model {result.model}, settings {result.settings_key}: fitted on "
                  f"{result.examples} reviewed drafts ({result.positives} accepted unchanged), "
                  f"{result.folds} folds", markup=False)  # fmt: skip
    table = Table("score", "AUROC for acceptance")
    for name, value in result.signal_auroc.items():
        table.add_row(name, _num(value))
    table.add_row("calibrator (cross-validated)", _num(result.auroc), style="bold")
    console.print(table)
    console.print(f"Expected calibration error (cross-validated): {_num(result.ece)}")
    if result.dry_run:
        console.print("Dry run: nothing stored.")
    else:
        console.print(f"Stored as calibrator v{result.version}; p_accept of {result.rescored} "
                      "drafts recomputed.")  # fmt: skip


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


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
    from labeler.review.report import write_report

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


@app.command("serve")
def serve_cli(
    model: Annotated[Path, typer.Option("--model", "-m", help="The checkpoint to serve.")],
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9090,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="LABELER_API_KEY",
            help="Ask every request for this key: HTTP Basic password (Label Studio's "
            "basic auth), or 'Authorization: Token KEY' or Bearer.",
            show_default=False,
        ),
    ] = None,
    document_root: Annotated[
        Path | None,
        typer.Option(
            envvar="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
            help="Read /data/local-files/ images under this folder (Label Studio's document "
            "root); never a file outside it.",
            show_default=False,
        ),
    ] = None,
    label_studio_url: Annotated[
        str | None,
        typer.Option(
            envvar="LABEL_STUDIO_URL",
            help="Download images Label Studio serves from here (default: the host its "
            "/setup call names).",
            show_default=False,
        ),
    ] = None,
    label_studio_api_key: Annotated[
        str | None,
        typer.Option(
            envvar="LABEL_STUDIO_API_KEY",
            help="Label Studio's API key, for downloads.",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    download_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where downloaded images are kept (default: ~/.cache/labeler/downloads).",
            show_default=False,
        ),
    ] = None,
    dataset: Annotated[
        str, typer.Option(help="Dataset for new images under the document root.")
    ] = "label-studio",
    beam: BeamOption = None,
    max_len: MaxLenOption = None,
    min_len: MinLenOption = None,
    length_penalty: LengthPenaltyOption = None,
    n_best: NBestOption = None,
    block_repeats: BlockRepeatsOption = None,
    block_unk: BlockUnkOption = None,
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 16,
    procs: Annotated[
        int | None,
        typer.Option(
            help="Model processes on a CPU (default: one per core, up to 8); 0 runs the "
            "model in the server's process."
        ),
    ] = None,  # fmt: skip
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    answer_within: Annotated[
        float,
        typer.Option(
            help="Seconds a /predict may take (Label Studio waits 100): tasks not drafted by "
            "then get no prediction now and are drafted for the next request."
        ),
    ] = 80.0,  # fmt: skip
) -> None:
    """Serve the model to Label Studio as an ML backend (needs the serve extra).

    Tasks get this model's draft and p_accept as their prediction (stored drafts are reused,
    new ones written to the store), and each submitted, updated, skipped or deleted annotation
    becomes a review in the store at once. Connect it in Label Studio with the model version it
    prints as the title, so the Prediction score column fills.
    """
    try:
        from labeler.review.backend import BackendSettings, serve
    except ImportError:
        err_console.print("labeler serve needs the serve extra: pip install 'labeler[serve]'",
                          markup=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(1) from None
    from labeler.caption.engines import open_model
    from labeler.errors import InputError
    from labeler.review.predictor import Predictor
    from labeler.review.task_images import Sources

    if answer_within <= 0:
        raise InputError("--answer-within must be more than 0 seconds")
    if document_root is not None and not document_root.is_dir():
        raise InputError(f"--document-root {document_root}: no such folder")
    if label_studio_url is not None and not label_studio_url.startswith(("http://", "https://")):
        raise InputError(f"--label-studio-url {label_studio_url!r}: give an http(s) URL")
    downloads = download_dir or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    ) / "labeler" / "downloads"  # fmt: skip
    sources = Sources(
        document_root=Path(os.path.realpath(document_root)) if document_root else None,
        download_dir=Path(os.path.realpath(downloads)),
        label_studio_url=label_studio_url.rstrip("/") if label_studio_url else None,
        api_key=label_studio_api_key or None,
    )  # fmt: skip
    captioner = open_model(model, device=device, procs=procs)
    decoding = decoding_for(
        captioner, beam=beam, max_len=max_len, min_len=min_len, length_penalty=length_penalty,
        n_best=n_best, block_repeats=block_repeats, block_unk=block_unk,
    )  # fmt: skip
    predictor = Predictor(
        open_store_for(db), captioner, decoding, sources, dataset=dataset, procs=procs,
        batch_size=batch_size, answer_within_s=answer_within,
    )  # fmt: skip
    settings = BackendSettings(model_version=predictor.model_version, api_key=api_key or None)
    console.print(f"Serving {settings.model_version} on http://{host}:{port} (connect it in "
                  f"Label Studio with this model version as its title)", markup=False,
                  soft_wrap=True)  # fmt: skip
    serve(settings, predictor, host=host, port=port)
