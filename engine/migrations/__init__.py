"""Alembic migrations of the tenant store, run by `Store.connect` (see engine/store.py)."""
