"""Alembic environment: migrates the connection `Store.connect` passes in, in its transaction."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("featurelm migrations run from Store.connect, not the alembic CLI; "
                       "write new revisions by hand in engine/migrations/versions/")
context.configure(connection=connection)
with context.begin_transaction():
    context.run_migrations()
