"""`labeler export`: drafts (and their reviews) to the tools reviewers use.

The store streams the selected drafts in order (store/drafts.py) straight into the format's
writer (labeler/formats), which writes atomically: a million drafts pass through in constant
memory and a failed export leaves no partial file behind. A large export is read in a child
process while this one writes (labeler/review/readahead.py).

An export killed midway leaves its temporary file behind (a kill -9 runs no cleanup). Each export
first removes such leftovers of dead writers beside its own targets (labeler/atomic.py tells them
from a live writer's by its lock) and reports how many, and their size, in the result. Sidecars
are left out: their targets are spread over every image folder.
"""

from __future__ import annotations

from pathlib import Path

from labeler.atomic import Removed, remove_leftovers
from labeler.errors import InputError
from labeler.formats import coco, cvat, hf, labelstudio, sidecar, tabular
from labeler.records import ExportResult
from labeler.review import readahead
from labeler.store import Store
from labeler.store.drafts import DEFAULT_SORT, DraftFilter, iter_drafts

FORMATS = ("csv", "jsonl", "json", "label-studio", "coco", "hf", "sidecar", "cvat")


def export_drafts(
    store: Store,
    fmt: str,
    dest: Path | None,
    *,
    spec: DraftFilter = DraftFilter(),
    sort: str = DEFAULT_SORT,
    n_best: int = 1,
    force: bool = False,
    document_root: Path | None = None,
    url_prefix: str | None = None,
    ground_truth: Path | None = None,
    extension: str = ".txt",
) -> ExportResult:
    """Write the drafts `spec` selects in `fmt` to `dest` (for sidecars: a mirror folder, or
    None for files next to the images)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if dest is None and fmt != "sidecar":
        raise InputError(f"the {fmt} export needs an output path (-o)")
    if n_best < 1:
        raise InputError("--n-best must be at least 1")
    removed = _remove_leftovers(fmt, dest, ground_truth)
    result = _write(store, fmt, dest, spec=spec, sort=sort, n_best=n_best, force=force,
                    document_root=document_root, url_prefix=url_prefix,
                    ground_truth=ground_truth, extension=extension)  # fmt: skip
    result.removed, result.removed_bytes = removed.count, removed.size
    return result


def _remove_leftovers(fmt: str, dest: Path | None, ground_truth: Path | None) -> Removed:
    """Remove the temporary files that killed exports left beside this export's targets."""
    if dest is None or fmt == "sidecar":
        return Removed()
    targets = [hf.metadata_path(dest) if fmt == "hf" else dest]
    if fmt == "label-studio":
        targets.append(labelstudio.config_path(dest))
    if fmt == "coco" and ground_truth is not None:
        targets.append(ground_truth)
    removed = Removed()
    for target in targets:
        removed += remove_leftovers(target)
    return removed


def _write(store: Store, fmt: str, dest: Path | None, *, spec: DraftFilter, sort: str,
           n_best: int, force: bool, document_root: Path | None, url_prefix: str | None,
           ground_truth: Path | None, extension: str) -> ExportResult:  # fmt: skip
    with store.session() as session:
        rows = iter_drafts(session, spec, sort=sort, n_best=n_best)
        if readahead.worthwhile(store, session, spec):
            prepare = tabular.prepare if fmt in ("csv", "jsonl", "json") else None
            rows = readahead.ReadAhead(store.url, rows, prepare)
        if fmt == "csv":
            return tabular.write_csv(rows, dest, force=force, n_best=n_best)
        if fmt == "jsonl":
            return tabular.write_jsonl(rows, dest, force=force, n_best=n_best)
        if fmt == "json":
            return tabular.write_json(rows, dest, force=force, n_best=n_best)
        if fmt == "label-studio":
            return labelstudio.write_label_studio(
                rows, dest, force=force, document_root=document_root, url_prefix=url_prefix
            )
        if fmt == "coco":
            return coco.write_coco(rows, dest, force=force, ground_truth=ground_truth)
        if fmt == "hf":
            return hf.write_hf(rows, dest, force=force)
        if fmt == "sidecar":
            return sidecar.write_sidecar(rows, dest, force=force, extension=extension)
        return cvat.write_cvat(rows, dest, force=force)
