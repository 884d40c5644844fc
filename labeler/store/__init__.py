"""The store: models, engine and migrations. Store functions take an explicit session."""

from labeler.store.engine import Store, resolve_url
from labeler.store.opening import open_store

__all__ = ["Store", "open_store", "resolve_url"]
