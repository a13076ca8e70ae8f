"""The run log's schema, in code: ``SampleRecord`` (one line of samples.jsonl) and ``Manifest``
(manifest.json), written and read by every part of the harness that touches a run folder.

A manifest carries its ``schema`` version: evaluation runs write ``EVAL_SCHEMA``, diagnostics
(``kind: analyze``) runs ``ANALYZE_SCHEMA``. A folder written under another version is refused
with "schema N, this version reads M" rather than misread; a manifest without a version (hand
written, or from before versions) is read as the current one. Keys this version does not know
are kept as they are, so rewriting a manifest (``harness judge``) loses nothing.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import DataError

__all__ = ["ANALYZE_SCHEMA", "EVAL_SCHEMA", "AttackEntry", "JudgeEntry", "Manifest", "SampleRecord", "VerdictRecord",
           "parse_manifest"]

EVAL_SCHEMA = 2
ANALYZE_SCHEMA = 1


class VerdictRecord(TypedDict, total=False):
    """One judge's verdict on a sample (``core.Verdict`` plus the hash of the judge that gave it)."""

    label: str  # harmful | safe | unscored
    score: float | None
    raw: str | None
    reason: str
    judge_hash: str


class SampleRecord(TypedDict, total=False):
    """One line of samples.jsonl: one prompt × setting × sample of a model. Skipped samples carry
    ``skipped`` (the reason) and no generation keys; utility records get ``metrics``, generated
    attack records after a harmful prefill ``recovered``."""

    sample_id: str
    kind: Literal["attack", "utility"]
    model: str
    model_fingerprint: str
    dataset: str
    dataset_hash: str
    example_id: str
    category: str
    cluster: str
    attack: str  # the attack's label (a utility record: the task's)
    attack_hash: str
    setting: dict[str, Any]
    setting_label: str
    sample_index: int
    prompt: str
    attack_info: dict[str, Any]  # what the attack did: prefill text/tokens, suffix and loss, …
    sampling: dict[str, Any]
    engine_hash: str
    cache_key: str
    completion: str
    completion_tokens: int
    finish_reason: str
    skipped: str | None
    verdicts: dict[str, VerdictRecord]
    recovered: bool | None
    metrics: dict[str, Any]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="allow")


class AttackEntry(_Entry):
    """``manifest.attacks[label]``: the attack's registered type, config hash and config."""

    type: str | None = None
    hash: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class JudgeEntry(_Entry):
    """``manifest.judges[name]``: the judge's type, hash, config and what it resolved to."""

    type: str | None = None
    hash: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    resolved: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    """manifest.json. The fields are in the order the file lists them; ``dump`` writes the keys
    that were set (read from the file or assigned), unknown ones after them."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_version: int | None = Field(None, alias="schema")
    kind: Literal["eval", "analyze"] | None = None  # absent: eval
    run_id: str | None = None
    status: str | None = None  # running | finalizing | complete | failed
    started: str | None = None
    command: list[str] = Field(default_factory=list)
    recipe: dict[str, Any] = Field(default_factory=dict)
    recipe_hash: str | None = None
    limit: int | None = None
    seed: int | None = None
    device: str | None = None
    dtype: str | None = None
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    attacks: dict[str, AttackEntry] = Field(default_factory=dict)
    utility: dict[str, dict[str, Any]] = Field(default_factory=dict)
    judges: dict[str, JudgeEntry] = Field(default_factory=dict)
    engines: dict[str, dict[str, Any]] = Field(default_factory=dict)
    engine_backend: dict[str, str] = Field(default_factory=dict)  # requested, resolved (auto), why
    analyses: dict[str, dict[str, Any]] = Field(default_factory=dict)
    files: list[str] = Field(default_factory=list)
    hardware: dict[str, Any] = Field(default_factory=dict)
    packages: dict[str, str | None] = Field(default_factory=dict)
    git: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    finished: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    engine_environment: dict[str, str] = Field(default_factory=dict)
    judged: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def is_analysis(self) -> bool:
        return self.kind == "analyze"

    @property
    def reads(self) -> int:
        """The schema version this code reads for the manifest's kind."""
        return ANALYZE_SCHEMA if self.is_analysis else EVAL_SCHEMA

    def attack_type(self, attack: str) -> str:
        """The registered type of the attack labelled ``attack``, else the label itself."""
        entry = self.attacks.get(attack)
        return str(entry.type if entry is not None and entry.type else attack)

    def mark_failed(self, error: BaseException) -> None:
        """Status ``failed``, with the exception's type and message as ``error``."""
        self.status, self.error = "failed", f"{type(error).__name__}: {error}"

    def dump(self) -> dict[str, Any]:
        """The JSON object to write (the keys that were set, in field order)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def parse_manifest(raw: Any, where: str) -> Manifest:
    """A manifest from its JSON object; a ``DataError`` naming ``where`` when it is not one, or
    when it was written under a schema version this code does not read."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: not a JSON object")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise DataError(f"{where}: {key}: {first['msg']}") from None
    if manifest.schema_version is not None and manifest.schema_version != manifest.reads:
        raise DataError(f"{where}: schema {manifest.schema_version}, this version reads {manifest.reads}; "
                        "re-run the recipe with this version (or read the folder with the version that wrote it)")
    return manifest
