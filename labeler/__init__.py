"""labeler: draft captions for image datasets, scored by their log-likelihood."""

__version__ = "0.1.0"


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """`labeler.open_store` (labeler/api.py), imported on first use so `import labeler` stays
    light."""
    if name in ("open_store", "LabelerStore", "DraftSelection"):
        from labeler import api

        return getattr(api, name)
    raise AttributeError(f"module 'labeler' has no attribute {name!r}")
