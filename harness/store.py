"""Results on disk: ``results/<run-id>/{manifest.json, samples.jsonl, summary.csv}``.

``samples.jsonl`` is append-only while a run is going, one flushed line per record, so a
killed run leaves valid JSONL (a torn last line is cut off on resume). Records are keyed
by ``sample_id``; a later line for the same id supersedes an earlier one, and the file is
compacted atomically at the end. Generations are also kept in a content-addressed SQLite
cache keyed on (model fingerprint, prompt token ids, sampling parameters incl. seed), so
re-running a recipe, or another recipe on the same prompts, regenerates nothing.

Record schema (one per prompt × setting × sample; later attack kinds add keys):
  sample_id, model, model_fingerprint, dataset, example_id, category, attack, setting,
  setting_label, sample_index, prompt, prefill_text, prefill_tokens, sampling, cache_key,
  completion, completion_tokens, finish_reason, skipped, verdicts{judge: Verdict}
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness.engine.base import Completion, Sampling

SAMPLES = "samples.jsonl"
MANIFEST = "manifest.json"
SUMMARY = "summary.csv"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cache_key(fingerprint_id: str, prompt_ids: Sequence[int], sampling: Sampling, engine: str = "") -> str:
    """Model fingerprint + prompt ids + sampling (incl. seed) + engine ("vllm:auto"): seeded
    sampling, and low-precision greedy ties, differ between backends and dtypes."""
    return _sha({"model": fingerprint_id, "prompt": list(prompt_ids), "sampling": sampling.to_json(),
                 "engine": engine})[:32]


def sample_id(*parts: Any) -> str:
    return _sha([str(p) for p in parts])[:20]


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


class GenerationCache:
    """Content-addressed completions: key -> list of n completions."""

    def __init__(self, path: Path) -> None:
        self.kv = SqliteKV(path, "gen", "completions")

    def get_many(self, keys: Iterable[str]) -> dict[str, list[Completion]]:
        return {k: [Completion.from_json(c) for c in json.loads(v)] for k, v in self.kv.get_many(keys).items()}

    def put_many(self, items: dict[str, list[Completion]]) -> None:
        self.kv.put_many({k: json.dumps([c.to_json() for c in v]) for k, v in items.items()})

    def close(self) -> None:
        self.kv.close()


class RunStore:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.samples_path = run_dir / SAMPLES
        self.records: dict[str, dict[str, Any]] = {}
        self._load()
        self._fh = open(self.samples_path, "a", encoding="utf-8")

    def _load(self) -> None:
        if not self.samples_path.exists():
            return
        good_bytes = 0
        with open(self.samples_path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # torn final line from a killed run
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError:
                    break
                self.records[rec["sample_id"]] = rec
                good_bytes += len(raw)
        if good_bytes != self.samples_path.stat().st_size:
            with open(self.samples_path, "r+b") as f:
                f.truncate(good_bytes)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            self.records[rec["sample_id"]] = rec
            self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.flush()

    def compact(self) -> None:
        """Rewrite samples.jsonl with one line per sample (atomic)."""
        tmp = self.samples_path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in self.records.values():
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.close()
        os.replace(tmp, self.samples_path)
        self._fh = open(self.samples_path, "a", encoding="utf-8")

    def write_json(self, name: str, obj: Any) -> None:
        tmp = self.dir / (name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
        os.replace(tmp, self.dir / name)

    def close(self) -> None:
        self._fh.close()


def read_samples(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a finished (or partial) run."""
    path = Path(run_dir) / SAMPLES
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return out
