"""Training data: readers for captioned data sets and the generated caption scenes."""

from labeler.data.readers import CaptionedImage, CaptionSet, SkipSummary, read_captions
from labeler.data.scenes import ScenesResult, generate_scenes, objects_right

__all__ = [
    "CaptionSet",
    "CaptionedImage",
    "ScenesResult",
    "SkipSummary",
    "generate_scenes",
    "objects_right",
    "read_captions",
]
