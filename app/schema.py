"""Where the canonical SQL lives and in which order it is applied."""

from __future__ import annotations

from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def sql_files() -> list[Path]:
    """The files of sql/, in the order they are applied (by file name)."""
    return sorted(SQL_DIR.glob("*.sql"))
