"""The command line: the only package that imports typer and rich.

Each command parses its options, opens the store, calls one library function and renders the
dataclass it returns. Importing this package registers every command on `app`.
"""

from labeler.cli import caption, files, review, training  # noqa: F401  (registers the commands)
from labeler.cli.app import app

__all__ = ["app"]
