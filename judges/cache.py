"""Judge cache: raw judge outputs in SQLite, keyed on what determines them.

The key is a hash of (judge model id, rubric hash, generation settings, prompt, response),
so re-judging a run, or judging another run with the same samples, asks the judge
nothing. Raw text is cached, not verdicts: changing a threshold or fixing a parser
re-applies to cached outputs for free. Transport failures are never cached.
The default file is ``<results root>/.cache/judgments.sqlite``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

CACHE_NAME = "judgments.sqlite"


def default_cache_path(run_dir: Path) -> Path:
    """``<results root>/.cache/judgments.sqlite`` for a run folder ``<results root>/<run-id>``."""
    return Path(run_dir).parent / ".cache" / CACHE_NAME


def judge_key(judge_model: str, rubric_hash: str, settings: dict[str, Any], prompt: str, response: str) -> str:
    blob = json.dumps([judge_model, rubric_hash, settings, prompt, response], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


class JudgeCache:
    """key -> raw judge output. Safe to open from several processes (SQLite locking)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, raw TEXT NOT NULL)")
        self.db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            batch = keys[i:i + 500]
            q = f"SELECT key, raw FROM judgments WHERE key IN ({','.join('?' * len(batch))})"
            out.update(self.db.execute(q, batch))
        return out

    def put_many(self, items: dict[str, str]) -> None:
        if items:
            self.db.executemany("INSERT OR REPLACE INTO judgments VALUES (?, ?)", list(items.items()))
            self.db.commit()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]

    def close(self) -> None:
        self.db.close()
