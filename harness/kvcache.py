"""The SQLite key-value table under every content-addressed cache (generations, judgments,
artefacts), and where the caches of a results root live (``<results root>/.cache``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable

__all__ = ["SqliteKV", "cache_root"]


class SqliteKV:
    """A key -> text table in SQLite with batched look-ups; safe to share between processes."""

    def __init__(self, path: Path, table: str, value_column: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.table, self.value_column = table, value_column
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, {value_column} TEXT NOT NULL)")
        self.db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, str] = {}
        for i in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            batch = keys[i:i + 500]
            q = f"SELECT key, {self.value_column} FROM {self.table} WHERE key IN ({','.join('?' * len(batch))})"
            out.update(self.db.execute(q, batch))
        return out

    def put_many(self, items: dict[str, str]) -> None:
        if items:
            self.db.executemany(f"INSERT OR REPLACE INTO {self.table} VALUES (?, ?)", list(items.items()))
            self.db.commit()

    def __len__(self) -> int:
        return self.db.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0]

    def close(self) -> None:
        self.db.close()


def cache_root(results_root: Path) -> Path:
    """The caches shared by every run under ``results_root`` (``<results root>/.cache``)."""
    return Path(results_root) / ".cache"
