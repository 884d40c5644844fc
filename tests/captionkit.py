"""A tiny real Show and Tell checkpoint for the caption job's tests (random weights, resnet18 on
32-pixel crops), with its decoder scaled so drafts differ from image to image; optionally with a
calibrator, as training leaves one fitted on its validation split."""

from __future__ import annotations

from pathlib import Path

import torch

from labeler.calibration import Calibrator
from labeler.model.checkpoint import save_checkpoint
from labeler.model.preprocessing import Preprocessing
from labeler.model.show_tell import ModelConfig, ShowAndTell
from labeler.model.vocab import Vocabulary

CAPTIONS = [
    "a red square on a white background",
    "a blue circle next to a green triangle",
    "two small yellow stars above a large black cross",
]


# Hand-set weights over calibration.SIGNALS: a likelier, longer-margin, clean draft scores higher.
CALIBRATOR = Calibrator(
    weights=[0.9, -0.2, 0.6, 0.4, 0.3, -1.0, -0.7, -0.8], bias=-0.3,
    mean=[-6.0, 6.0, -1.0, -2.5, 0.5, 0.0, 0.0, 0.0],
    scale=[3.0, 2.0, 0.6, 1.5, 0.5, 1.0, 1.0, 1.0],
    source="validation", criterion="objects right", examples=200, positives=90, auroc=0.8,
    ece=0.05,
)  # fmt: skip


def tiny_checkpoint(path: Path, *, seed: int = 0, calibrator: Calibrator | None = None) -> Path:
    torch.manual_seed(seed)
    vocab = Vocabulary.build(CAPTIONS)
    config = ModelConfig(
        backbone="resnet18", embed_size=16, hidden_size=24, vocab_size=len(vocab), dropout=0.0,
        preprocessing=Preprocessing(resize=40, crop=32, mean=(0.485, 0.456, 0.406),
                                    std=(0.229, 0.224, 0.225)),
    )  # fmt: skip
    model = ShowAndTell(config)
    with torch.no_grad():
        model.decoder.lstm.weight_ih_l0.mul_(6.0)
        model.decoder.lstm.weight_hh_l0.mul_(2.0)
        model.decoder.out.weight.mul_(6.0)
    save_checkpoint(
        path, model.eval(), vocab, training={"note": "random weights, for tests"},
        calibrator=calibrator.to_dict() if calibrator is not None else None,
    )  # fmt: skip
    return path


def scanned_photos(store, folder: Path, images: int) -> Path:  # type: ignore[no-untyped-def]
    """`images` small images in `folder`, scanned into `store`: distinct JPEGs and one
    palette PNG with transparency (the caption engines' tests' set)."""
    import imagefactory

    from labeler.files.scan import scan

    imagefactory.write_many(folder, images - 1, size=(48, 40), fmt="JPEG")
    imagefactory.palette_png_transparent(folder)
    scan(store, [folder], workers=1)
    return folder
