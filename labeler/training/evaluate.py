"""`labeler evaluate`: how good the drafts are, in the numbers captioning papers report.

Two questions, one output. `evaluate_model` captions a split of a captioned data set with a
checkpoint (batched beam search through `ShowTellCaptioner`, images decoded exactly as the caption
job decodes them) and scores the best draft of each image against its references.
`evaluate_store` scores the drafts already in the store (each image's best draft from one model
and decoding settings) against what reviewers kept: the newest review's text when it accepted or
edited the draft, so an accepted draft scores as its own reference and the corpus numbers measure
how much reviewers had to change.

Scores come from `labeler.training.metrics.score_captions` (pycocoevalcap's scorers; METEOR is
skipped, and the summary says why, when Java is missing). Each run writes `results.jsonl` (one
line per image: key, hypothesis, references, confidence, per-image scores) and `summary.json`,
together and atomically, into the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labeler.atomic import atomic_outputs
from labeler.errors import InputError
from labeler.model.drafts import DecodeSettings
from labeler.store import Store
from labeler.store.drafts import DraftFilter, iter_drafts
from labeler.training.metrics import Scores, score_captions
from labeler.training.readers import CaptionSet

RESULTS_NAME = "results.jsonl"
SUMMARY_NAME = "summary.json"


@dataclass
class Evaluated:
    """One image's best draft and what it is compared with."""

    key: str
    hypothesis: str
    references: list[str]
    confidence: float
    log_likelihood: float
    num_tokens: int


@dataclass
class EvaluationResult:
    scores: Scores
    images: list[Evaluated]
    summary: dict[str, Any]  # what summary.json holds
    failed: Counter[str] = field(default_factory=Counter)  # "status: reason" -> images
    paths: list[Path] = field(default_factory=list)  # the files written
    elapsed_s: float = 0.0


def evaluate_model(
    checkpoint: str | Path,
    data: CaptionSet,
    *,
    split: str = "test",
    settings: DecodeSettings | None = None,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 32,
    device: str = "auto",
    workers: int | None = None,
    limit: int | None = None,
    use_java: bool = True,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Caption the images of `split` with the checkpoint and score the best drafts. `settings`
    None decodes with the checkpoint's own defaults (DecodeSettings() for an older file), with
    `overrides` (DecodeSettings fields; None keeps one) applied on top."""
    from labeler.model.captioner import ShowTellCaptioner
    from labeler.training.features import PixelReader

    started = time.perf_counter()
    items = data.in_split(split)
    if not items:
        found = ", ".join(sorted(data.split_counts())) or "none"
        raise InputError(f"{data.source}: no images in split {split!r} (splits: {found})")
    if batch_size < 1 or (limit is not None and limit < 1):
        raise InputError("batch size and limit must be at least 1")
    items = items[:limit]
    captioner = ShowTellCaptioner.from_checkpoint(checkpoint, device=device)
    settings = (settings or captioner.decoding or DecodeSettings()).overridden(**(overrides or {}))
    evaluated, failed = [], Counter()
    with PixelReader(captioner.preprocessing, workers=workers) as reader:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            pixels, bad = reader.read([it.image_path for it in chunk])
            failed.update(bad.values())
            keep = [j for j in range(len(chunk)) if j not in bad]
            if keep:
                drafts = captioner.caption(pixels[keep], settings)
                for j, found in zip(keep, drafts, strict=True):
                    evaluated.append(_evaluated(chunk[j].key, found.best, chunk[j].captions))
            if progress is not None:
                progress(min(start + batch_size, len(items)), len(items))
    about = {
        "model": captioner.name, "checkpoint": str(checkpoint), "content_hash": captioner.identity,
        "data": str(data.source), "format": data.fmt, "split": split,
        "settings": settings.to_dict(), "failed": dict(failed),
    }  # fmt: skip
    return _finish(evaluated, about, failed, out_dir, use_java, force, started)


def evaluate_store(
    store: Store,
    *,
    spec: DraftFilter = DraftFilter(),
    out_dir: str | Path | None = None,
    use_java: bool = True,
    force: bool = False,
) -> EvaluationResult:
    """Score the store's best drafts (of the filter's model and settings, by default the newest
    run's) against the newest review of each image that accepted or edited one."""
    started = time.perf_counter()
    spec = dataclasses.replace(spec, review=("accepted", "edited"))
    evaluated, outcomes = [], Counter()
    model = settings_key = None
    with store.session() as session:
        for row in iter_drafts(session, spec, sort="id"):
            reference = row.review_text or row.text  # an accepted draft may carry no text
            evaluated.append(_evaluated(f"{row.dataset}/{row.path}", row, [reference]))
            outcomes[row.review_outcome] += 1
            model, settings_key = row.model_version, row.settings_key
    if not evaluated:
        raise InputError("no reviewed drafts to evaluate: import reviews of these drafts first")
    about = {
        "model": model, "settings_key": settings_key, "data": "store reviews",
        "reviews": dict(outcomes),
    }  # fmt: skip
    return _finish(evaluated, about, Counter(), out_dir, use_java, force, started)


def _evaluated(key: str, draft, references: list[str]) -> Evaluated:  # type: ignore[no-untyped-def]
    return Evaluated(key, draft.text, list(references), draft.confidence, draft.log_likelihood,
                     draft.num_tokens)  # fmt: skip


def _finish(evaluated, about, failed, out_dir, use_java, force, started) -> EvaluationResult:  # type: ignore[no-untyped-def]
    if not evaluated:
        raise InputError("no image could be captioned: " + (", ".join(failed) or "none given"))
    scores = score_captions(
        {e.key: e.references for e in evaluated},
        {e.key: e.hypothesis for e in evaluated},
        use_java=use_java,
    )
    confidences = [e.confidence for e in evaluated]
    summary = {
        **about, "images": len(evaluated), "scores": scores.summary(),
        "skipped_metrics": scores.skipped, "notes": scores.notes, "tokenizer": scores.tokenizer,
        "mean_confidence": sum(confidences) / len(confidences),
    }  # fmt: skip
    result = EvaluationResult(scores, evaluated, summary, failed)
    if out_dir is not None:
        result.paths = _write(Path(out_dir), evaluated, scores, summary, force)
    result.elapsed_s = time.perf_counter() - started
    return result


def _write(out_dir: Path, evaluated, scores: Scores, summary: dict, force: bool) -> list[Path]:  # type: ignore[no-untyped-def]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / RESULTS_NAME, out_dir / SUMMARY_NAME]
    with atomic_outputs(paths, force=force) as (results, summary_file):
        for e in evaluated:
            per_image = scores.per_image[e.key]
            record = {**dataclasses.asdict(e), "scores": _image_scores(per_image)}
            results.write(json.dumps(record, ensure_ascii=False) + "\n")
        summary_file.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return paths


def _image_scores(s) -> dict[str, float | None]:  # type: ignore[no-untyped-def]
    values = {"BLEU-4": s.bleu_4, "METEOR": s.meteor, "ROUGE-L": s.rouge_l, "CIDEr": s.cider}
    return {k: (v if v is None or math.isfinite(v) else None) for k, v in values.items()}
