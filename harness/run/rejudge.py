"""Re-judging a finished run (`harness judge`): every sample scored again by the given judges
(or the recipe's), the tables rewritten, and the manifest told which judges now stand behind
the verdicts (``judges``) and when they were applied (``judged``). Nothing is generated."""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from harness.core import ReducerConfig
from harness.errors import RecipeError
from harness.run.finalize import finalize
from harness.run.provenance import judge_entry
from harness.run.store import MANIFEST, RunLock, read_manifest, read_samples, write_json
from harness.runlog import JudgeEntry, SampleRecord

__all__ = ["describe_judge", "rejudge"]


def describe_judge(judge: Any) -> dict[str, Any]:
    """What a judge resolved to (a chain: its members'), for the manifest's ``judged`` log."""
    if hasattr(judge, "describe"):
        return judge.describe()
    if hasattr(judge, "members"):
        return {"name": judge.name, "chain": [describe_judge(m) for m in judge.members]}
    return {"name": judge.name}


def rejudge(run_dir: Path, configs: Sequence[Any] | None, cache_path: Path | None,
            progress: bool = True) -> tuple[pd.DataFrame, list[SampleRecord], list[tuple[Any, Any]]]:
    """Judge ``run_dir`` again with ``configs`` (None: the judges its recipe names), under its
    lock; returns the new summary, the records and the (config, judge) pairs."""
    from judges.llm import validate_judges

    with RunLock(run_dir):
        manifest = read_manifest(run_dir)
        records = read_samples(run_dir)
        recipe_judges = manifest.recipe.get("judges")
        if configs is None:
            if not recipe_judges:
                raise RecipeError(f"{run_dir / MANIFEST}: no recipe judges recorded; give --judge")
            configs = validate_judges(recipe_judges, f"{run_dir / MANIFEST} recipe.judges")
        judges = [(c, c.make()) for c in configs]
        reducers = {label: [ReducerConfig.model_validate(r) for r in a.config.get("reducers", [])]
                    for label, a in manifest.attacks.items()}
        summary = finalize(run_dir, records, judges, reducers, progress=progress, cache_path=cache_path)
        entries = {j.name: judge_entry(c, j) for c, j in judges}
        manifest.judges = {**manifest.judges, **{k: JudgeEntry.model_validate(v) for k, v in entries.items()}}
        manifest.judged = [*manifest.judged, {
            "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "command": sys.argv,
            "judges": [c.model_dump(mode="json") for c in configs], "resolved": [describe_judge(j) for _, j in judges]}]
        write_json(run_dir / MANIFEST, manifest.dump())
    return summary, records, judges
