"""labeler: draft captions for image datasets, scored by their log-likelihood."""

__version__ = "0.1.0"
