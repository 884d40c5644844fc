"""Alembic environment: the URL comes from labeler's own settings, SQLite changes run in batch mode.

`labeler` runs the migrations itself when a store is opened and hands over its connection (already
inside a locked transaction); the `alembic` command line, for writing new revisions, falls back to
`--db`'s resolution: `$LABELER_DB`, then `./labeler.db`.
"""

from alembic import context

from labeler.store.engine import create_engine_for, resolve_url
from labeler.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine_for(resolve_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("labeler's migrations run online only: open the store with labeler")
run_migrations_online()
