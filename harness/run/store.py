"""Results on disk: run folders, their lock, and the content-addressed caches.

A run folder ``results/<run-id>/`` holds exactly one evaluation: the one its last
invocation planned. Its files (manifest.json, samples.jsonl, summary.csv, …) are rewritten
atomically at the end of every invocation from the caches below, never appended to, so a
table cannot mix two configurations. ``history.jsonl`` keeps one line per invocation.

The caches live in ``<results root>/.cache/`` and are shared by every run and recipe:

- ``generations.sqlite``: completions keyed on the model fingerprint, the prompt token ids,
  the sampling parameters and the engine (backend, resolved dtype, ``extra``, versions,
  device; HF batch size). A killed run resumes from it: every finished chunk is committed.
- ``judgments.sqlite``: raw LLM-judge outputs (see ``judges.cache``).
- ``artifacts.sqlite``: attack artefacts (optimised suffixes, …) keyed by their attack.

The records of samples.jsonl and the manifest are typed and versioned in ``harness.runlog``
(``SampleRecord``, ``Manifest``).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness.core import Sampling, canonical_json, content_hash
from harness.engine.base import Completion
from harness.errors import DataError, HarnessError, read_json_file
from harness.kvcache import SqliteKV
from harness.runlog import Manifest, SampleRecord, parse_manifest

SAMPLES = "samples.jsonl"
MANIFEST = "manifest.json"
SUMMARY = "summary.csv"
HISTORY = "history.jsonl"
LOCK = ".lock"


def generation_key(fingerprint_id: str, prompt_ids: Sequence[int], sampling: Sampling, engine_hash: str) -> str:
    """What determines a completion: model, prompt ids, sampling (greedy ignores top-p/k and
    seed), and the engine (seeded sampling and low-precision greedy ties differ between them)."""
    return content_hash({"model": fingerprint_id, "prompt": list(prompt_ids), "sampling": sampling.key(),
                         "engine": engine_hash}, 32)


def sample_id(*parts: Any) -> str:
    return content_hash([str(p) for p in parts], 20)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- caches


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


ARTIFACTS_DB = "artifacts.sqlite"  # under cache_root(results root)


class ArtifactCache:
    """Attack artefacts as JSON (e.g. a GCG suffix with its loss curve), keyed by the attack."""

    TABLE = "artifacts"

    def __init__(self, path: Path) -> None:
        self.kv = SqliteKV(path, self.TABLE, "value")

    def get(self, key: str) -> Any | None:
        raw = self.kv.get_many([key]).get(key)
        return None if raw is None else json.loads(raw)

    def put(self, key: str, value: Any) -> None:
        self.kv.put_many({key: canonical_json(value)})

    def close(self) -> None:
        self.kv.close()


# --------------------------------------------------------------------------- run folders


class RunLock:
    """An exclusive lock on a run folder for the length of one invocation.

    A second run into the same folder fails at once with the first one's pid and start time;
    the lock is the kernel's (flock), so a killed run never leaves a stale lock behind."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._fh: Any = None

    def __enter__(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.run_dir / LOCK, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise HarnessError(f"{self.run_dir} is in use by another harness run ({holder}); wait for it to "
                               "finish, or write this run elsewhere with --run-id") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, started {now()}")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.seek(0)
            self._fh.truncate()
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def write_samples(run_dir: Path, records: Iterable[SampleRecord]) -> None:
    """samples.jsonl, written atomically."""
    path = Path(run_dir) / SAMPLES
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def append_history(run_dir: Path, entry: dict[str, Any]) -> None:
    with open(Path(run_dir) / HISTORY, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")


def read_samples(run_dir: Path) -> list[SampleRecord]:
    """The records of a run's samples.jsonl. A line that is not a JSON record (an edited or
    damaged file) is reported with its line number and skipped; every other line is kept."""
    path = Path(run_dir) / SAMPLES
    if not path.is_file():
        raise DataError(f"{path} does not exist; give a run folder, e.g. results/prefill")
    out = []
    bad: list[int] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "sample_id" not in rec:
                    raise ValueError("not a record")
            except ValueError:
                bad.append(line_no)
                continue
            out.append(rec)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
        print(f"warning: {path}: line(s) {shown} are not sample records and were skipped; the other "
              f"{len(out)} records are kept", file=sys.stderr, flush=True)
    return out


def read_manifest(run_dir: Path) -> Manifest:
    """A run's manifest.json; errors name the file (invalid JSON, a key of the wrong type, a
    schema version this code does not read)."""
    path = Path(run_dir) / MANIFEST
    raw = read_json_file(path, f"{path} does not exist; give a run folder, e.g. results/prefill")
    return parse_manifest(raw, str(path))
