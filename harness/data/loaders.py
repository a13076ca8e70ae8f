"""Dataset formats: bundled demo, AdvBench, HarmBench, HEx-PHI, generic JSONL/CSV."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from harness.data.base import (
    DatasetConfig,
    Example,
    bundled_path,
    csv_header,
    read_rows,
    require_path,
    rows_to_examples,
)
from harness.errors import DataError, read_json_file

HEXPHI_CATEGORIES = (
    "Illegal Activity",
    "Child Abuse Content",
    "Hate/Harass/Violence",
    "Malware",
    "Physical Harm",
    "Economic Harm",
    "Fraud/Deception",
    "Adult Content",
    "Political Campaigning",
    "Privacy Violation Activity",
    "Tailored Financial Advice",
)


def _bundled(cfg: DatasetConfig, filename: str, prefix: str) -> list[Example]:
    path = Path(cfg.path).expanduser() if cfg.path else bundled_path(filename)
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist")
    return rows_to_examples(path, cfg.columns, prefix)


def load_demo(cfg: DatasetConfig) -> list[Example]:
    """Bundled demo benchmark: 66 harmful instructions over the 11 HEx-PHI categories."""
    return _bundled(cfg, "harmful_demo.jsonl", "demo")


def load_harmful_train(cfg: DatasetConfig) -> list[Example]:
    """Bundled training triples (prompt, response, refusal); disjoint from `demo`."""
    return _bundled(cfg, "harmful_train.jsonl", "htrain")


def load_benign_train(cfg: DatasetConfig) -> list[Example]:
    """Bundled benign instructions with responses (utility anchors); disjoint from evaluation."""
    return _bundled(cfg, "benign_train.jsonl", "btrain")


def load_jsonl(cfg: DatasetConfig) -> list[Example]:
    """Generic JSONL/JSON; `columns` maps Example fields to keys (dots index nested JSON)."""
    path = require_path(cfg)
    return rows_to_examples(path, cfg.columns, path.stem)


def load_csv(cfg: DatasetConfig) -> list[Example]:
    """Generic CSV/TSV with a header; `columns` maps Example fields to header names."""
    path = require_path(cfg)
    return rows_to_examples(path, cfg.columns, path.stem)


def load_advbench(cfg: DatasetConfig) -> list[Example]:
    """AdvBench harmful_behaviors.csv (`goal,target`)."""
    path = require_path(cfg)
    columns = {"prompt": "goal", "target": "target", **cfg.columns}
    return rows_to_examples(path, columns, "advbench")


def load_harmbench(cfg: DatasetConfig) -> list[Example]:
    """HarmBench behaviors CSV, optionally with its targets JSON (BehaviorID -> target)."""
    path = require_path(cfg)
    header = csv_header(path)
    for col in ("Behavior", "BehaviorID"):
        if col not in header:
            raise DataError(f"{path}:1: column {col!r} not in header; columns are {header}")
    targets: dict[str, str] = {}
    if cfg.targets:
        tpath = Path(cfg.targets).expanduser()
        targets = read_json_file(tpath, f"HarmBench targets file {tpath} does not exist")
        if not isinstance(targets, dict):
            raise DataError(f"{tpath}: expected an object mapping BehaviorID to target string")
    out = []
    for line_no, row in read_rows(path):
        behavior, bid = (row.get("Behavior") or "").strip(), (row.get("BehaviorID") or "").strip()
        if not behavior or not bid:
            raise DataError(f"{path}:{line_no}: column {'Behavior' if not behavior else 'BehaviorID'!r} is empty")
        context = (row.get("ContextString") or "").strip()
        prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior  # HarmBench's contextual layout
        category = (row.get("SemanticCategory") or "").strip()
        out.append(Example(id=bid, prompt=prompt, category=category, target=targets.get(bid),
                           meta={"line": line_no, "functional_category": row.get("FunctionalCategory", "")}))
    if targets:
        missing = [e.id for e in out if e.target is None]
        if missing:
            raise DataError(f"{cfg.targets}: no target for BehaviorID(s) {missing[:5]}{' …' if len(missing) > 5 else ''}")
    return out


def load_hexphi(cfg: DatasetConfig) -> list[Example]:
    """HEx-PHI per-category CSVs (category_N.csv, one instruction per row): a folder or one file."""
    path = require_path(cfg)
    files = sorted(path.glob("category_*.csv"), key=_category_number) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no category_N.csv files")
    out: list[Example] = []
    for f in files:
        n = _category_number(f)
        if not 1 <= n <= len(HEXPHI_CATEGORIES):
            raise DataError(f"{f}: file name must be category_1.csv … category_11.csv")
        with open(f, encoding="utf-8", newline="") as fh:
            for line_no, row in enumerate(csv.reader(fh), 1):
                cells = [c for c in row if c.strip()]
                if not cells:
                    continue
                if len(cells) != 1:
                    raise DataError(f"{f}:{line_no}: expected one instruction per row, found {len(cells)} cells")
                out.append(Example(id=f"hexphi-{n}-{line_no:03d}", prompt=cells[0].strip(),
                                   category=HEXPHI_CATEGORIES[n - 1], meta={"line": line_no}))
    return out


def _category_number(p: Path) -> int:
    m = re.search(r"category_(\d+)", p.stem)
    if not m:
        raise DataError(f"{p}: file name must look like category_N.csv")
    return int(m.group(1))
