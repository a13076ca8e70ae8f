"""Judge cache: raw judge outputs in SQLite, keyed on what determines them.

The key is a hash of (judge model id, rubric hash, generation settings, prompt, response,
category) — everything the rubric template receives —
so re-judging a run, or judging another run with the same samples, asks the judge
nothing. Raw text is cached, not verdicts: changing a threshold or fixing a parser
re-applies to cached outputs for free. Transport failures are never cached.
The default file is ``<results root>/.cache/judgments.sqlite``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from harness.kvcache import SqliteKV, cache_root

CACHE_NAME = "judgments.sqlite"


def default_cache_path(run_dir: Path) -> Path:
    """``<results root>/.cache/judgments.sqlite`` for a run folder ``<results root>/<run-id>``."""
    return cache_root(Path(run_dir).parent) / CACHE_NAME


def judge_key(judge_model: str, rubric_hash: str, settings: dict[str, Any], prompt: str, response: str,
              category: str = "") -> str:
    blob = json.dumps([judge_model, rubric_hash, settings, prompt, response, category], sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


class JudgeCache(SqliteKV):
    """key -> raw judge output."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "judgments", "raw")
