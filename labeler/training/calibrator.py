"""The end of training: decode the validation split as the model will be used, judge each draft,
and fit the calibrator the checkpoint keeps (p_accept = P(right | the draft's own signals)).

The drafts are decoded with the decoding settings the checkpoint will carry as its defaults
(`labeler caption` uses them unless told otherwise), so the calibrator learns on the same kind of
drafts it will score. What "right" means is documented per kind of data:
- generated scenes (the images carry their `objects`): the draft names every object's colour and
  shape and nothing else (`scenes.objects_right`), the demo's own measure;
- any other data: the draft's sentence-level CIDEr-D against the image's references is at least
  `CIDER_RIGHT` (1.0: a draft that shares about as many informative n-grams with the references
  as a typical reference does), an approximation of "a reviewer would keep it" until
  `labeler calibrate` refits on real reviews.
Too few right or wrong drafts (a weak or a perfect model on a small split) leave the checkpoint
without a calibrator, and `confidence` stands in for p_accept, as the reason recorded says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from labeler.calibration import Calibrator, draft_signals, fit
from labeler.errors import InputError
from labeler.model.captioner import ShowTellCaptioner
from labeler.model.drafts import DecodeSettings, ImageDrafts

CIDER_RIGHT = 1.0
SCENES_CRITERION = "objects right (every object's colour and shape, nothing else)"
CIDER_CRITERION = f"sentence CIDEr-D >= {CIDER_RIGHT} against the references"


@dataclass
class ValidationCalibration:
    calibrator: Calibrator | None
    criterion: str
    drafts: int  # validation images decoded
    right: int  # of which judged right
    reason: str | None = None  # why there is no calibrator
    texts: list[str] = field(default_factory=list)  # the best drafts, in validation order

    def summary(self) -> dict:
        """Plain values for the checkpoint's training metadata."""
        c = self.calibrator
        return {
            "criterion": self.criterion, "drafts": self.drafts, "right": self.right,
            "auroc": c.auroc if c else None, "ece": c.ece if c else None,
            "signal_auroc": c.signal_auroc if c else {}, "reason": self.reason,
        }  # fmt: skip


def signals_of(drafts: ImageDrafts) -> list[float]:
    """The best draft's calibration signals."""
    d = drafts.best
    return draft_signals(
        d.log_likelihood, d.num_tokens, d.token_logprobs, drafts.margin, d.finished,
        d.repeated_ngram, d.has_unknown,
    )  # fmt: skip


def fit_on_validation(
    captioner: ShowTellCaptioner,
    inputs: Callable[[list[int]], torch.Tensor],
    images: Sequence[int],
    *,
    references: Sequence[Sequence[str]],
    extras: Sequence[dict],
    settings: DecodeSettings,
    batch_size: int = 64,
) -> ValidationCalibration:
    """Decode `images` (indices; `inputs(chunk)` gives their features or pixels), judge each
    draft against `references[i]` (or `extras[i]["objects"]` for scenes) and fit."""
    drafts: list[ImageDrafts] = []
    for s in range(0, len(images), batch_size):
        chunk = list(images[s : s + batch_size])
        x = inputs(chunk)
        if x.dim() == 2:
            drafts += captioner.caption_features(x, settings)
        else:
            drafts += captioner.caption(x, settings)
    texts = [d.best.text for d in drafts]
    refs = [references[i] for i in images]
    scene_objects = [extras[i].get("objects") for i in images]
    if all(objects is not None for objects in scene_objects):
        from labeler.training.scenes import objects_right

        criterion = SCENES_CRITERION
        right = [objects_right(t, o) for t, o in zip(texts, scene_objects, strict=True)]
    else:
        criterion = CIDER_CRITERION
        right = [score >= CIDER_RIGHT for score in sentence_cider(texts, refs)]
    result = ValidationCalibration(None, criterion, len(drafts), sum(right), texts=texts)
    try:
        result.calibrator = fit(
            [signals_of(d) for d in drafts], right, source="validation", criterion=criterion,
            settings_key=settings.key(),
        )  # fmt: skip
    except InputError as exc:
        result.reason = str(exc)
    return result


def sentence_cider(texts: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """CIDEr-D of each text against its own references (document frequencies from all of them)."""
    if not texts:
        return []
    from pycocoevalcap.cider.cider import Cider

    from labeler.training.metrics import simple_tokenize

    refs = {i: [simple_tokenize(r) for r in rs] for i, rs in enumerate(references)}
    hyps = {i: [simple_tokenize(t)] for i, t in enumerate(texts)}
    _, scores = Cider().compute_score(refs, hyps)
    return [float(x) for x in scores]
