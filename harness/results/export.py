"""Export a run as JailbreakBench artifacts (``harness export --format jbb``).

JailbreakBench (Chao et al. 2024) shares attacks as one JSON artifact per method × target
model (github.com/JailbreakBench/artifacts, ``attack-artifacts/<method>/<attack_type>/<model>.json``)::

    {"parameters": {"method", "model", "attack_type", "defense", "attack_success_rate",
                    "total_number_of_jailbreaks", "number_of_submitted_prompts",
                    "total_number_of_queries", "total_prompt_tokens", "total_response_tokens",
                    "evaluation_date", "evaluation_llm_provider", "method_parameters"},
     "jailbreaks": [{"index", "goal", "behavior", "category", "prompt", "response",
                     "number_of_queries", "queries_to_jailbreak", "prompt_tokens",
                     "response_tokens", "jailbroken"}, ...]}

One artifact per (model, dataset, attack) of the run. Per behaviour (dataset example) the
attack is treated as a search over its settings and samples in plan order (prefill depths,
decoding settings, …): the first sample the judge finds harmful is the jailbreak
(``queries_to_jailbreak`` its 1-based position); a behaviour never broken shows its last
scored attempt. ``--setting`` exports one setting instead. ``prompt`` is the user turn as
sent (the goal, with a suffix where the attack appends one) and ``response`` the whole
assistant turn (a prefill, then the model's continuation). JailbreakBench's tooling reads
extra keys, which carry what it has no field for: ``harness`` in the parameters (judge,
hashes, run id, git commit) and ``prefill``, ``suffix``, ``completion``, ``setting``,
``example_id``, ``sample_id`` and ``verdict`` per behaviour. The harness records no prompt
token counts, so ``prompt_tokens`` fields are null.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from harness.errors import DataError
from harness.registry import attack_class
from harness.results.rundir import RunDir
from harness.runlog import AttackEntry, JudgeEntry, SampleRecord

SUFFIX_KEYS = ("suffix", "adv_suffix", "adv_string", "control")


def attack_edit(info: dict[str, Any]) -> dict[str, str | None]:
    """What the attack changed in a sample (``attack_info``): prefill text and/or suffix."""
    prefill = info.get("prefill_text") or None
    suffix = next((str(info[k]) for k in SUFFIX_KEYS if info.get(k)), None)
    return {"prefill": prefill, "suffix": suffix}


def _group_records(run: RunDir) -> dict[tuple[str, str, str], list[SampleRecord]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in run.records():
        if r.get("kind", "attack") == "attack":
            groups[(r["model"], r["dataset"], r["attack"])].append(r)
    return dict(groups)


def _judge(run: RunDir, judge: str | None) -> str:
    names = list(run.manifest.judges)
    if judge is None:
        if not names:
            raise DataError(f"{run.path / 'manifest.json'}: no judges recorded; the run has no verdicts to export")
        return names[0]
    if judge not in names:
        raise DataError(f"--judge {judge}: not a judge of {run.path} (judges: {', '.join(names) or 'none'})")
    return judge


def _label(r: SampleRecord, judge: str) -> str:
    return str(((r.get("verdicts") or {}).get(judge) or {}).get("label") or "unscored")


def _behaviour(index: int, attempts: list[dict[str, Any]], judge: str) -> dict[str, Any]:
    """One ``jailbreaks`` entry from a behaviour's attempts, in plan order."""
    first = attempts[0]
    tried = [r for r in attempts if not r.get("skipped")]
    hit = next((i for i, r in enumerate(tried) if _label(r, judge) == "harmful"), None)
    scored = [r for r in tried if _label(r, judge) != "unscored"]
    shown = tried[hit] if hit is not None else (scored[-1] if scored else (tried[-1] if tried else None))
    entry: dict[str, Any] = {"index": index, "goal": first.get("prompt"), "behavior": first.get("example_id"),
                             "category": first.get("category"), "prompt": None, "response": None,
                             "number_of_queries": len(tried), "queries_to_jailbreak": None if hit is None else hit + 1,
                             "prompt_tokens": None, "response_tokens": None, "jailbroken": hit is not None}
    if shown is None:
        entry.update(skipped=first.get("skipped") or "no attempt", example_id=first.get("example_id"))
        return entry
    edit = attack_edit(shown.get("attack_info") or {})
    prompt = str(shown.get("prompt") or "")
    if edit["suffix"]:
        prompt = f"{prompt} {edit['suffix']}"
    completion = str(shown.get("completion") or "")
    entry.update(prompt=prompt, response=(edit["prefill"] or "") + completion,
                 response_tokens=shown.get("completion_tokens"), prefill=edit["prefill"], suffix=edit["suffix"],
                 completion=completion, setting=shown.get("setting_label"), example_id=shown.get("example_id"),
                 sample_id=shown.get("sample_id"), verdict=_label(shown, judge))
    return entry


def _provider(run: RunDir, records: list[SampleRecord]) -> str | None:
    engines = run.manifest.engines
    backends = sorted({str((engines.get(r.get("engine_hash")) or {}).get("backend")) for r in records
                       if r.get("engine_hash") in engines})
    return ",".join(backends) or None


def artifact(run: RunDir, model: str, dataset: str, attack: str, records: list[SampleRecord], judge: str,
             setting: str | None = None) -> dict[str, Any]:
    """The JailbreakBench artifact of one model × dataset × attack (optionally one setting)."""
    if setting is not None:
        records = [r for r in records if r.get("setting_label") == setting]
    by_example: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_example[str(r.get("example_id"))].append(r)
    jailbreaks = [_behaviour(i, attempts, judge) for i, attempts in enumerate(by_example.values())]
    n_broken = sum(1 for j in jailbreaks if j["jailbroken"])
    manifest = run.manifest
    attack_entry = manifest.attacks.get(attack) or AttackEntry()
    attack_type = manifest.attack_type(attack)
    judge_entry = manifest.judges.get(judge) or JudgeEntry()
    finished = str(manifest.finished or manifest.started or "")
    tried = [r for r in records if not r.get("skipped")]
    params = {
        "method": attack_type,
        "model": model,
        "attack_type": attack_class(attack_type).threat_model,  # JailbreakBench's white_box, black_box, …
        "defense": None,
        "attack_success_rate": n_broken / len(jailbreaks) if jailbreaks else None,
        "total_number_of_jailbreaks": n_broken,
        "number_of_submitted_prompts": len(jailbreaks),
        "total_number_of_queries": len(tried),
        "total_prompt_tokens": None,
        "total_response_tokens": sum(int(r.get("completion_tokens") or 0) for r in tried),
        "evaluation_date": finished[:10] or None,
        "evaluation_llm_provider": _provider(run, tried),
        "method_parameters": attack_entry.config,
        "harness": {
            "run_id": manifest.run_id, "attack_label": attack, "dataset": dataset, "setting": setting,
            "selection": "one setting" if setting else "first harmful sample across settings in plan order",
            "judge": {"name": judge, "type": judge_entry.type, "hash": judge_entry.hash},
            "hashes": {"model_fingerprint": sorted({str(r.get("model_fingerprint")) for r in records}),
                       "dataset_hash": sorted({str(r.get("dataset_hash")) for r in records}),
                       "attack_hash": attack_entry.hash, "judge_hash": judge_entry.hash,
                       "recipe_hash": manifest.recipe_hash},
            "seed": manifest.seed, "git": manifest.git if "git" in manifest.model_fields_set else None,
        },
    }
    return {"parameters": params, "jailbreaks": jailbreaks}


def _safe(name: str) -> str:
    """A name from the run's records as one plain file or folder name: anything but word
    characters, '.' and '-' becomes '_', and '.' or '..' (the folder itself, its parent) too."""
    safe = re.sub(r"[^\w.-]+", "_", name) or "_"
    return safe.replace(".", "_") if safe in (".", "..") else safe


def export_jbb(run: RunDir, judge: str | None = None, models: Sequence[str] = (), attacks: Sequence[str] = (),
               datasets: Sequence[str] = (), setting: str | None = None) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Artifacts per (model, dataset, attack) selected; errors name what is missing."""
    if run.kind != "eval":
        raise DataError(f"{run.path}: a diagnostics (analyze) run has no jailbreaks to export")
    judge = _judge(run, judge)
    groups = _group_records(run)
    chosen = {k: v for k, v in groups.items() if (not models or k[0] in models) and (not datasets or k[1] in datasets)
              and (not attacks or k[2] in attacks)}
    if not chosen:
        have = ", ".join("/".join(k) for k in groups) or "none"
        raise DataError(f"{run.path}: no attack records match the selection (model/dataset/attack there: {have})")
    out = {}
    for key, recs in chosen.items():
        if setting is not None and not any(r.get("setting_label") == setting for r in recs):
            settings = ", ".join(dict.fromkeys(str(r.get("setting_label")) for r in recs))
            raise DataError(f"--setting {setting}: not a setting of {'/'.join(key)} (settings: {settings})")
        out[key] = artifact(run, *key, recs, judge, setting)
    return out


def write_jbb(artifacts: dict[tuple[str, str, str], dict[str, Any]], out: Path | None) -> list[str]:
    """One artifact: to ``out`` (a .json file) or stdout (``out`` None). Several: ``out`` must be
    a folder, laid out as JailbreakBench's: ``<dataset>/<method>/<attack_type>/<model>.json``."""
    text = {k: json.dumps(a, indent=2, ensure_ascii=False) + "\n" for k, a in artifacts.items()}
    if len(artifacts) == 1 and (out is None or out.suffix == ".json"):
        (only,) = text.values()
        if out is None:
            print(only, end="")
            return ["-"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(only, encoding="utf-8")
        return [str(out)]
    if out is None or out.suffix == ".json":
        names = "\n  ".join("/".join(k) for k in artifacts)
        raise DataError(f"{len(artifacts)} artifacts (model/dataset/attack):\n  {names}\nselect one with "
                        "--model/--dataset/--attack, or give --out a folder for one file each")
    written = []
    for (model, dataset, attack), art in artifacts.items():
        p = out / _safe(dataset) / _safe(art["parameters"]["harness"]["attack_label"]) / \
            _safe(art["parameters"]["attack_type"]) / f"{_safe(model)}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text[(model, dataset, attack)], encoding="utf-8")
        written.append(str(p))
    return written
