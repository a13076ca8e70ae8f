"""Reading finished run folders (``results/<run-id>/``) for reports, comparisons and gates.

Only files are read (manifest.json, summary.csv, utility.csv, samples.jsonl, and the CSVs a
``kind: analyze`` run writes); nothing here runs a model. Errors name the file and the key,
column or line at fault.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from harness.errors import DataError
from harness.kvcache import cache_root
from harness.run.store import ARTIFACTS_DB, MANIFEST, SUMMARY, ArtifactCache, read_manifest, read_samples
from harness.run.summary import COLUMNS as SUMMARY_COLUMNS
from harness.run.summary import KEYS as CELL_KEYS
from harness.runlog import Manifest, SampleRecord
from harness.utility.table import UTILITY_COLUMNS, UTILITY_CSV

__all__ = ["CELL_KEYS", "AnalysisTable", "RunDir", "load_run", "load_runs", "parse_setting_label", "run_labels"]

# Columns of the tables a ``kind: analyze`` run writes (harness.analysis.output.write_*), by kind.
ANALYSIS_COLUMNS: dict[str, tuple[str, ...]] = {
    "kl": ("a", "b", "position", "n", "mean", "ci95_low", "ci95_high"),
    "refusal": ("model", "depth", "n", "mean_logprob", "ci95_low", "ci95_high"),
    "grad": ("model", "position", "n", "mean_ce", "grad_norm"),
}
_TEXT_SUMMARY = CELL_KEYS + ["detail", "model_fingerprint", "dataset_hash", "attack_hash", "judge_hash"]


@dataclass(frozen=True)
class AnalysisTable:
    """One diagnostics CSV: its kind (kl | refusal | grad), file stem and rows (numbers parsed)."""

    kind: str
    stem: str
    rows: list[dict[str, Any]]


@dataclass
class RunDir:
    """A run folder: ``kind`` is "eval" (a recipe run) or "analyze" (diagnostics)."""

    path: Path
    label: str
    manifest: Manifest
    summary: pd.DataFrame | None = None
    utility: pd.DataFrame | None = None
    analyses: list[AnalysisTable] = field(default_factory=list)
    _records: list[SampleRecord] | None = None
    _curves: dict[tuple[int, ...], list[float]] | None = None

    @property
    def kind(self) -> str:
        return "analyze" if self.manifest.is_analysis else "eval"

    @property
    def complete(self) -> bool:
        return self.manifest.status == "complete"

    def records(self) -> list[SampleRecord]:
        """samples.jsonl (read once)."""
        if self._records is None:
            self._records = read_samples(self.path) if self.kind == "eval" else []
        return self._records

    def artifact_curves(self) -> dict[tuple[int, ...], list[float]]:
        """Loss curves of the attack artefacts (e.g. GCG suffixes) in the results root's
        artefact cache (``<results>/.cache/artifacts.sqlite``), keyed by the suffix token ids
        that a record's ``attack_info.suffix_ids`` names; {} when there is no cache (a run
        folder copied on its own) or it cannot be read."""
        if self._curves is None:
            self._curves = read_artifact_curves(cache_root(self.path.parent) / ARTIFACTS_DB)
        return self._curves

    def attack_type(self, attack: str) -> str:
        """The attack's registered type (``prefill``, ``decoding``, …) from the manifest, else its label."""
        return self.manifest.attack_type(attack)


def read_artifact_curves(path: Path) -> dict[tuple[int, ...], list[float]]:
    """{suffix token ids: per-step losses} of the artefacts in an artefact cache that carry both
    (read-only; a missing or unreadable cache gives {})."""
    import json
    import sqlite3

    if not Path(path).is_file():
        return {}
    out: dict[tuple[int, ...], list[float]] = {}
    try:
        db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute(f"SELECT value FROM {ArtifactCache.TABLE} WHERE value LIKE '%\"losses\"%'").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return {}
    for (raw,) in rows:
        try:
            art = json.loads(raw)
        except ValueError:
            continue
        ids, losses = art.get("suffix_ids") if isinstance(art, dict) else None, art.get("losses") if isinstance(art, dict) else None
        if isinstance(ids, list) and isinstance(losses, list) and losses and \
                all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses):
            out[tuple(int(i) for i in ids)] = [float(v) for v in losses]
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_value(text: str) -> Any:
    """A setting value as written by ``setting_label``: int, float, bool or the string."""
    if text in ("True", "False"):
        return text == "True"
    if _is_number(text):
        number = float(text)
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    return text


def parse_setting_label(label: str) -> dict[str, Any]:
    """``"param=temperature,value=0.3,system=none"`` -> {"param": "temperature", "value": 0.3,
    "system": "none"}; "default" -> {}. Parts without "=" (reducer names such as "any") give {}."""
    if label in ("", "default"):
        return {}
    out: dict[str, Any] = {}
    for part in label.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            return {}
        out[key.strip()] = parse_value(value.strip())
    return out


def _read_csv(path: Path, required: Sequence[str], text_columns: Sequence[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False,
                         na_values={c: ["", "nan", "NaN"] for c in required if c not in text_columns})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected the harness's {path.name} layout")
    for c in text_columns:
        if c in df.columns:
            df[c] = df[c].fillna("").astype(str)
    return df


def read_summary(run_dir: Path) -> pd.DataFrame:
    return _read_csv(Path(run_dir) / SUMMARY, SUMMARY_COLUMNS, _TEXT_SUMMARY)


def read_utility(run_dir: Path) -> pd.DataFrame | None:
    path = Path(run_dir) / UTILITY_CSV
    if not path.is_file():
        return None
    return _read_csv(path, UTILITY_COLUMNS, ["model", "setting", "task", "metric", "ci"])


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_analysis_csv(path: Path) -> AnalysisTable | None:
    """A diagnostics CSV recognised by its header (see ``ANALYSIS_COLUMNS``), else None."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            header = set(reader.fieldnames or [])
            kind = next((k for k, cols in ANALYSIS_COLUMNS.items() if header >= set(cols)), None)
            if kind is None:
                return None
            text = {"a", "b", "model"}
            rows = [{k: (v if k in text else _number(v)) for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None
    return AnalysisTable(kind, path.stem, rows)


def _analyses(run_dir: Path) -> list[AnalysisTable]:
    out = []
    for path in sorted(Path(run_dir).glob("*.csv")):
        if path.name in (SUMMARY, UTILITY_CSV, "scorecard.csv", "agreement.csv", "judge_scores.csv"):
            continue
        table = read_analysis_csv(path)
        if table is not None:
            out.append(table)
    return out


def load_run(path: Path | str, label: str | None = None) -> RunDir:
    """A run folder: its manifest, and summary.csv / utility.csv (evaluation runs) or its
    diagnostics CSVs (analysis runs). samples.jsonl is read on demand (``RunDir.records``)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} is not a run folder (expected results/<run-id>/ with {MANIFEST})")
    run = RunDir(path, label or path.name, read_manifest(path))
    if run.kind == "eval":
        run.summary = read_summary(path)
        run.utility = read_utility(path)
    run.analyses = _analyses(path)
    return run


def run_labels(paths: Iterable[Path | str]) -> list[str]:
    """Short unique labels: the folder names, with parent folders added where two would clash
    (the same folder given twice: name#1, name#2)."""
    paths = [Path(p).resolve() for p in paths]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{p.name}#{i + 1}" for i, p in enumerate(paths)]


def load_runs(paths: Sequence[Path | str]) -> list[RunDir]:
    return [load_run(p, lab) for p, lab in zip(paths, run_labels(paths))]
