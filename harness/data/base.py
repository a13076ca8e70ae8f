"""Example type, dataset config, and row readers whose errors name file, line and column."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from pydantic import Field

from harness.core import Example, StrictModel
from harness.errors import DataError, read_json_file
from harness.names import PlainName
from harness.registry import DATASET_FORMATS

BUNDLED_DIR = Path(__file__).parent / "bundled"
EXAMPLE_FIELDS = ("id", "prompt", "category", "target", "response", "refusal", "cluster")


class SynthConfig(StrictModel):
    """Write one column of a dataset with a model, through the engine, cached by content
    (e.g. harmful responses h sampled from the unaligned base model on AdvBench prompts)."""

    model: str = Field(description="model spec that writes the column (alias, HF folder, .gguf, hub id)")
    field: Literal["response", "target", "refusal"] = "response"
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0: greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    system_prompt: str | None = None
    backend: Literal["auto", "vllm", "hf"] | None = Field(None, description="engine that writes it; default: "
                                                                       "the recipe's engine.backend")
    keep_unfinished: bool = Field(True, description="keep answers cut off at max_tokens")
    drop_refusals: bool = Field(True, description="drop rows whose written column contains a refusal phrase "
                                                  "(keyword judge): a harmful prefill must be harmful")


class DatasetConfig(StrictModel):
    """One dataset entry of a recipe."""

    format: str = Field(description="demo | jsonl | csv | advbench | harmbench | hexphi (see `harness list`)")
    name: PlainName | None = Field(None, description="label in results and in cache file names; default: the "
                                                     "file's stem, else the format")
    path: str | None = None
    columns: dict[str, str] = Field(default_factory=dict, description="Example field -> column (dots index nested JSON)")
    targets: str | None = Field(None, description="HarmBench targets JSON (BehaviorID -> target)")
    categories: list[str] | None = None
    rows: str | None = Field(None, pattern=r"^\d*:\d*$", description="a slice of the file's rows, e.g. '0:260'")
    limit: int | None = Field(None, ge=1)
    synth: SynthConfig | None = Field(None, description="write a column with a model (cached)")

    @property
    def label(self) -> str:
        return self.name or (Path(self.path).stem if self.path else self.format)


Loader = Callable[[DatasetConfig], list[Example]]


def bundled_path(name: str) -> Path:
    return BUNDLED_DIR / name


def require_path(cfg: DatasetConfig) -> Path:
    if not cfg.path:
        raise DataError(f"dataset format {cfg.format!r} needs a `path`")
    p = Path(cfg.path).expanduser()
    if not p.exists():
        raise DataError(f"dataset file {p} does not exist")
    return p


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) from .jsonl/.json/.csv; bad rows raise DataError naming the line."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
                yield line_no, row
    elif suffix == ".json":
        data = read_json_file(path)
        if isinstance(data, dict):  # {"data": [...]} style
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DataError(f"{path}: expected a list of objects (or an object holding one list)")
            data = lists[0]
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise DataError(f"{path}: item {i}: expected a JSON object")
            yield i + 1, row
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if not reader.fieldnames:
                raise DataError(f"{path}: empty file (no header line)")
            for row in reader:
                if None in row:  # more cells than header columns
                    raise DataError(f"{path}:{reader.line_num}: more cells than the header's {len(reader.fieldnames)} columns")
                yield reader.line_num, row
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .csv or .tsv)")


def csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return next(csv.reader(f), [])


def get_column(row: dict[str, Any], column: str) -> Any:
    """Column lookup; ``a.0.b`` indexes nested JSON. Raises KeyError when absent."""
    if column in row:
        return row[column]
    cur: Any = row
    for part in column.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise KeyError(column)
    return cur


def read_fields(path: Path, fields: dict[str, bool], columns: dict[str, str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of ``path`` as (line, {field: text}). ``fields`` maps each field to whether it is
    required; ``columns`` maps fields to the file's column names (dots index nested JSON). A
    missing or empty required column, or one mapped explicitly but absent, raises DataError
    naming file, line and column; an optional field is read only when present."""
    unknown = sorted(set(columns) - set(fields))
    if unknown:
        raise DataError(f"{path}: columns map has unknown field(s) {unknown}; allowed: {sorted(fields)}")
    if path.suffix.lower() in (".csv", ".tsv"):
        header = csv_header(path)
        for fld, required in fields.items():
            col = columns.get(fld, fld)
            if (required or fld in columns) and col not in header:
                raise DataError(f"{path}:1: column {col!r} (for {fld}) not in header; columns are {header}")
    out: list[tuple[int, dict[str, str]]] = []
    for line_no, row in read_rows(path):
        values: dict[str, str] = {}
        for fld, required in fields.items():
            col = columns.get(fld, fld)
            try:
                val: Any = get_column(row, col)
            except KeyError:
                if required or fld in columns:
                    raise DataError(f"{path}:{line_no}: missing column {col!r} (for {fld})") from None
                continue
            if val is None or (isinstance(val, str) and not val.strip()):
                if required:
                    raise DataError(f"{path}:{line_no}: column {col!r} (for {fld}) is empty")
                continue
            if isinstance(val, (dict, list)):
                raise DataError(f"{path}:{line_no}: column {col!r} (for {fld}) is a {type(val).__name__}, "
                                "expected text")
            values[fld] = str(val)
        out.append((line_no, values))
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def unique_id(path: Path, line_no: int, given: str | None, prefix: str, n: int, seen: set[str]) -> str:
    """The row's id (or ``prefix-000n``); a repeated id is an error naming the line."""
    ex_id = given.strip() if given else f"{prefix}-{n:04d}"
    if ex_id in seen:
        raise DataError(f"{path}:{line_no}: duplicate id {ex_id!r}")
    seen.add(ex_id)
    return ex_id


def rows_to_examples(path: Path, columns: dict[str, str], id_prefix: str,
                     required: tuple[str, ...] = ("prompt",)) -> list[Example]:
    """Examples from a JSONL/JSON/CSV file through ``columns`` (Example field -> column)."""
    fields = {f: f in required for f in EXAMPLE_FIELDS}
    out: list[Example] = []
    seen: set[str] = set()
    for line_no, values in read_fields(path, fields, columns):
        ex_id = unique_id(path, line_no, values.pop("id", None), id_prefix, len(out) + 1, seen)
        out.append(Example(id=ex_id, **values, meta={"line": line_no}))
    return out


def load_dataset(cfg: DatasetConfig, synth: bool = True, backend: str | None = None) -> list[Example]:
    """Load, slice ``rows``, filter by category, cap at ``limit``, then write a ``synth`` column
    (unless ``synth`` is False: `harness validate` loads no model) with the engine ``backend``
    (the recipe's) unless ``synth.backend`` names one."""
    examples = DATASET_FORMATS.get(cfg.format)(cfg)
    if cfg.rows:
        start, _, stop = cfg.rows.partition(":")
        examples = examples[int(start) if start else None:int(stop) if stop else None]
    if cfg.categories:
        known = {e.category for e in examples}
        missing = [c for c in cfg.categories if c not in known]
        if missing:
            raise DataError(f"dataset {cfg.label}: categories {missing} not present; have {sorted(known)}")
        examples = [e for e in examples if e.category in cfg.categories]
    examples = examples[: cfg.limit] if cfg.limit else examples
    if cfg.synth is not None and synth:
        from harness.synth import synthesize_column

        examples = synthesize_column(examples, cfg.synth, cfg.label, backend=backend)
    return examples
