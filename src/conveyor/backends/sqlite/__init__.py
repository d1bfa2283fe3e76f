"""SQLite storage: the embedded default (``sqlite:///path/to/conveyor.db``)."""

from __future__ import annotations

from conveyor.backends.sqlite.backend import SQLiteBackend

__all__ = ["SQLiteBackend"]
