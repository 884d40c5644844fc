"""The Python API: what the commands do, called from a notebook or a script without the CLI.

    import labeler

    store = labeler.open_store("labeler.db")
    store.scan("photos", "/data/photos")
    store.caption("model.pt")
    df = store.drafts(max_p_accept=0.5).to_pandas()
    for draft in store.drafts(review=["unreviewed"]):  # streamed, for stores of any size
        ...
    store.export("review.csv", format="csv", max_p_accept=0.5)
    store.import_reviews("reviewed.csv")

In a script (not a notebook), call these under `if __name__ == "__main__":`: scan, caption and
export start worker processes, which import the script that started them again (Python's rule
for the forkserver and spawn start methods), and unguarded calls would run again there.

Every method takes the options of its command, by keyword, with the same names as the library
functions (`datasets=` for `--dataset`, `path_glob=` for `--path`); errors are the library's
(labeler.errors), one line each. Importing labeler stays light: torch, pandas and the store are
imported when first used.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labeler.records import ExportRow

if TYPE_CHECKING:
    import pandas

    from labeler.store import Store

PathLike = str | os.PathLike[str]


def open_store(db: PathLike | None = None, *, create: bool = True) -> LabelerStore:
    """The store at `db` (a SQLite file or a SQLAlchemy URL; default $LABELER_DB, else
    ./labeler.db), upgraded to the newest schema. `create=False`: a SQLite file that does not
    exist is an error instead of a new store."""
    from labeler.store import open_store as open_engine

    return LabelerStore(open_engine(db, create=create))


class LabelerStore:
    """One store, and the pipeline's steps on it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> LabelerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.dispose()

    def __repr__(self) -> str:
        from labeler.store.engine import display_url

        return f"LabelerStore({display_url(self.store.url)!r})"

    # -- files -------------------------------------------------------------------------------

    def scan(self, dataset: str, *folders: PathLike, **options: Any):  # type: ignore[no-untyped-def]
        """`labeler scan FOLDER... --dataset NAME`: returns the ScanResult. Options: include,
        exclude, hidden, follow_symlinks, max_pixels, workers."""
        from labeler.files.scan import scan

        if not folders:
            raise TypeError("scan() needs at least one folder")
        return scan(self.store, list(folders), dataset=dataset, **options)

    def datasets(self) -> list[dict[str, Any]]:
        """`labeler datasets`: each dataset's name, root and images counted by status."""
        from labeler.store import images as image_store

        with self.store.session() as session:
            counts = image_store.status_counts(session)
            found = image_store.dataset_list(session)
        return [
            {"name": name, "root": root, "images": dict(counts.get(name, {}))}
            for name, root in found
        ]

    # -- caption -----------------------------------------------------------------------------

    def caption(self, model: PathLike, *, device: str = "auto", **options: Any):  # type: ignore[no-untyped-def]
        """`labeler caption --model CHECKPOINT`: returns the CaptionResult. Decoding options
        (beam_size, max_len, min_len, length_penalty, n_best, block_repeat_ngram, block_unk)
        default to the checkpoint's; the others are caption_images' (datasets, batch_size,
        procs, workers, limit, recaption, lease_s, progress), and engine="ray" with ray_address
        and ray_actors for `--engine ray`."""
        from labeler.caption.engines import open_model
        from labeler.caption.job import caption_images
        from labeler.caption.ray_engine import options_for
        from labeler.model.drafts import DecodeSettings

        decoding = _take(options, DecodeSettings)
        options["ray"] = options_for(
            options.pop("engine", "local"), address=options.pop("ray_address", None),
            actors=options.pop("ray_actors", None), device=device,
        )  # fmt: skip
        remote = options["ray"] is not None
        captioner = open_model(model, device=device, procs=options.get("procs"), remote=remote)
        settings = (captioner.decoding or DecodeSettings()).overridden(**decoding)
        return caption_images(self.store, captioner, settings=settings, **options)

    # -- review ------------------------------------------------------------------------------

    def drafts(self, *, sort: str | None = None, n_best: int = 1, **filters: Any) -> DraftSelection:
        """The best drafts `labeler export` would write with the same filters (datasets,
        model, settings_key, min/max_confidence, min/max_p_accept, review, flagged, path_glob,
        include_stale, limit), worst p_accept first unless `sort` says otherwise. Nothing is
        read until the selection is iterated or converted."""
        from labeler.store.drafts import DEFAULT_SORT, DraftFilter

        return DraftSelection(self.store, DraftFilter(**filters), sort or DEFAULT_SORT, n_best)

    def export(self, path: PathLike | None, *, format: str, **options: Any):  # type: ignore[no-untyped-def]  # noqa: A002
        """`labeler export -f FORMAT -o PATH`: returns the ExportResult. Filters as `drafts`;
        other options: sort, n_best, force, document_root, url_prefix, ground_truth,
        extension."""
        from labeler.review.export import export_drafts
        from labeler.store.drafts import DraftFilter

        spec = DraftFilter(**_take(options, DraftFilter))
        dest = Path(path) if path is not None else None
        return export_drafts(self.store, format, dest, spec=spec, **options)

    def import_reviews(self, path: PathLike, **options: Any):  # type: ignore[no-untyped-def]
        """`labeler import FILE`: returns the ImportResult; all or nothing. Options: fmt,
        reviewer, datasets."""
        from labeler.review.importer import import_reviews

        return import_reviews(self.store, Path(path), **options)

    def stats(self, *, bins: int = 10, target: float = 0.95, **filters: Any):  # type: ignore[no-untyped-def]
        """`labeler stats`: how far p_accept can be trusted on the reviews (a Stats)."""
        from labeler.review.stats import compute_stats
        from labeler.store.drafts import DraftFilter

        return compute_stats(self.store, spec=DraftFilter(**filters), bins=bins, target=target)


class DraftSelection:
    """Drafts selected by `LabelerStore.drafts`: iterate for ExportRows (streamed, one read of
    the store), or take them whole as a DataFrame or a list of dicts."""

    def __init__(self, store: Store, spec: Any, sort: str, n_best: int) -> None:
        self.store, self.spec, self.sort, self.n_best = store, spec, sort, n_best

    def __iter__(self) -> Iterator[ExportRow]:
        for chunk in self._chunks():
            yield from chunk.rows()

    def records(self) -> Iterator[dict[str, Any]]:
        """Each draft as a dict of COLUMNS (alternatives as lists of dicts), streamed."""
        for chunk in self._chunks():
            columns = [_column(chunk, name) for name in COLUMNS]
            for values in zip(*columns, strict=True):
                yield dict(zip(COLUMNS, values, strict=True))

    def to_pandas(self) -> pandas.DataFrame:
        """One row per draft, COLUMNS in order (alternatives as lists of dicts; reviewed_at a
        UTC timestamp)."""
        import pandas as pd

        parts: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        for chunk in self._chunks():
            for name in COLUMNS:
                parts[name].extend(_column(chunk, name))
        frame = pd.DataFrame(parts, columns=list(COLUMNS))
        frame["reviewed_at"] = pd.to_datetime(frame["reviewed_at"], utc=True)
        return frame

    def _chunks(self) -> Iterator[Any]:
        from labeler.store.drafts import iter_drafts

        with self.store.session() as session:
            yield from iter_drafts(session, self.spec, sort=self.sort, n_best=self.n_best).chunks()


def _column(chunk: Any, name: str) -> Sequence[Any]:
    values = getattr(chunk, name)
    if name == "alternatives":
        return [[dataclasses.asdict(a) for a in alternatives] for alternatives in values]
    return values


# The DataFrame's columns: a draft's image, its scores and signals, and the review that counts.
COLUMNS: Sequence[str] = tuple(f.name for f in dataclasses.fields(ExportRow))


def _take(options: dict[str, Any], owner: type) -> dict[str, Any]:
    """The options that are fields of the dataclass `owner`, taken out of `options`."""
    names = {f.name for f in dataclasses.fields(owner)}
    return {k: options.pop(k) for k in list(options) if k in names}
