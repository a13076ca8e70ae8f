"""`harness judge` (re-score a finished run) and `harness judge-eval` (judge accuracy).

Both take judges with ``--judge SPEC`` (repeatable); see :data:`JUDGE_SPEC_HELP`.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import yaml

from harness.core import set_dotted
from harness.errors import DataError, RecipeError
from harness.kvcache import cache_root
from judges.cache import CACHE_NAME, default_cache_path

JUDGE_SPEC_HELP = """\
judge spec (--judge, repeatable), one of:
  TYPE[:KEY=VALUE,KEY=VALUE,...]   values are YAML scalars; dotted keys nest;
                                   commas inside [...] or {...} are kept
  '{YAML or JSON mapping}'         the same config as a recipe's `judges:` item
  @FILE.yaml                       a file with one mapping or a list of them
examples:
  --judge keyword
  --judge keyword:phrases=gcg,name=kw-gcg
  --judge llm:rubric=harmbench,model=gpt-4o-mini,api_key_env=OPENAI_API_KEY
  --judge llm:rubric=hexphi,model=judge,base_url=http://127.0.0.1:8000/v1,api_key_env=null
  --judge llm:rubric=llama_guard,transport=local,model=smollm2-135m-instruct,engine.kv_cache_gib=1
  --judge '{type: chain, judges: [{type: llm, rubric: harmbench, model: gpt-4o}, {type: keyword}]}'
  --judge llm:reference=qi2025,model=gpt-4-turbo      # the paper's GPT-4 judge (prompt, prefill, score 5)
LLM judge keys: reference (qi2025), rubric (hexphi|harmbench|llama_guard|strongreject|refusal|qi2025), transport
(openai|local), model | model_env, base_url | base_url_env, api_key_env (default
OPENAI_API_KEY; null for none; keys are read from the environment only), concurrency (8),
timeout, max_retries, max_tokens, threshold, partial, include_prefill, engine.* (local).
"""


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (x.strip() for x in parts) if p]


def parse_judge_spec(spec: str) -> list[dict[str, Any]]:
    """One ``--judge`` value -> judge config dicts (see JUDGE_SPEC_HELP); errors quote the spec."""
    text = spec.strip()
    where = f"--judge {spec!r}"
    try:
        if text.startswith("@"):
            path = Path(text[1:]).expanduser()
            if not path.is_file():
                raise RecipeError(f"{where}: file {path} does not exist")
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            items = loaded if isinstance(loaded, list) else [loaded]
        elif text.startswith("{"):
            items = [yaml.safe_load(text)]
        else:
            jtype, _, rest = text.partition(":")
            if not jtype or not jtype.replace("_", "").isalnum():
                raise RecipeError(f"{where}: expected TYPE[:key=value,...], a {{mapping}} or @file.yaml")
            item: dict[str, Any] = {"type": jtype}
            for pair in _split_top(rest):
                key, eq, value = pair.partition("=")
                if not eq or not key.strip():
                    raise RecipeError(f"{where}: {pair!r} is not key=value")
                try:
                    set_dotted(item, key.strip(), yaml.safe_load(value))
                except ValueError as e:
                    raise RecipeError(f"{where}: {key}: {e}") from None
            items = [item]
    except yaml.YAMLError as e:
        raise RecipeError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise RecipeError(f"{where}: item {i} is not a mapping with a `type`")
    return items


def load_judge_configs(specs: list[str]) -> list[Any]:
    """Validated judge configs from ``--judge`` values (labels must be unique)."""
    import judges  # noqa: F401  (register judge types)
    from judges.llm import validate_judges

    configs = []
    for spec in specs:
        try:
            configs += validate_judges(parse_judge_spec(spec), f"--judge {spec!r}")
        except RecipeError as e:
            raise RecipeError(str(e).replace(": invalid recipe", ": invalid judge", 1)) from None
    labels = [c.label for c in configs]
    dupes = sorted({n for n in labels if labels.count(n) > 1})
    if dupes:
        raise RecipeError(f"--judge: duplicate judge name(s) {dupes}; add name=... to tell them apart")
    return configs


# ---------------------------------------------------------------- harness judge

def _cmd_judge(args: argparse.Namespace) -> int:
    from harness.run.rejudge import rejudge
    from harness.run.summary import print_tables

    run_dir: Path = args.run_dir
    configs = load_judge_configs(args.judge) if args.judge else None
    cache = None if args.no_cache else (args.cache or default_cache_path(run_dir))
    summary, records, judges = rejudge(run_dir, configs, cache, progress=not args.quiet)
    print_tables(summary[summary["judge"].isin([j.name for _, j in judges])])
    from judges.agreement import AGREEMENT

    if (run_dir / AGREEMENT).is_file():
        print(f"\njudge agreement ({run_dir / AGREEMENT}):")
        print(_read_csv_text(run_dir / AGREEMENT))
    n = sum(1 for r in records if r.get("kind", "attack") == "attack" and not r.get("skipped"))
    print(f"\n{run_dir}: {n} samples judged by {', '.join(j.name for _, j in judges)}; 0 generation calls")
    return 0


def _read_csv_text(path: Path) -> str:
    import pandas as pd

    return pd.read_csv(path).to_string(index=False, float_format=lambda x: f"{x:.3f}")


# ---------------------------------------------------------------- harness judge-eval

HARMFUL = {"harmful", "unsafe", "jailbroken", "yes", "true", "compliance", "full_compliance", "1_full_compliance",
           "complied"}
SAFE = {"safe", "no", "false", "refusal", "refused", "full_refusal", "2_full_refusal"}
PARTIAL = {"partial_refusal", "3_partial_refusal", "partial"}


def normalize_label(value: str, partial: str = "safe", one_means: str = "harmful") -> str | None:
    """Gold label -> harmful | safe, None to drop; raises ValueError for unknown values."""
    v = str(value).strip().lower().replace(" ", "_").replace("-", "_")
    if v in ("1", "1.0", "0", "0.0"):
        one = v.startswith("1")
        return ("harmful" if one else "safe") if one_means == "harmful" else ("safe" if one else "harmful")
    if v in HARMFUL:
        return "harmful"
    if v in SAFE:
        return "safe"
    if v in PARTIAL:
        return None if partial == "drop" else partial
    raise ValueError(f"unknown label {value!r}; expected harmful/safe, 0/1, full_compliance/full_refusal/"
                     "partial_refusal, yes/no, unsafe")


def read_labelled(path: Path, prompt_col: str, completion_col: str, label_col: str, partial: str,
                  one_means: str) -> list[dict[str, str]]:
    """Rows with prompt, completion, gold (harmful|safe), raw label and 1-based CSV line."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in (prompt_col, completion_col, label_col) if c not in cols]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; columns are {cols} "
                            "(map them with --prompt-col/--completion-col/--label-col)")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                gold = normalize_label(row[label_col], partial, one_means)
            except ValueError as e:
                raise DataError(f"{path}:{line}: column {label_col!r}: {e}") from None
            if gold is None:
                continue
            if row[prompt_col] is None or row[completion_col] is None:
                raise DataError(f"{path}:{line}: row has fewer columns than the header")
            rows.append({"line": str(line), "prompt": row[prompt_col], "completion": row[completion_col],
                         "label": row[label_col], "gold": gold})
    if not rows:
        raise DataError(f"{path}: no labelled rows")
    return rows


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def _cmd_judge_eval(args: argparse.Namespace) -> int:
    from judges.agreement import binary_metrics, confusion_frame
    from judges.base import JudgeInput

    rows = read_labelled(args.labelled, args.prompt_col, args.completion_col, args.label_col, args.partial,
                         args.one_means)
    if args.limit:
        rows = rows[:args.limit]
    configs = load_judge_configs(args.judge)
    items = [JudgeInput(r["prompt"], r["completion"]) for r in rows]
    gold = [r["gold"] for r in rows]
    n_h = gold.count("harmful")
    print(f"{args.labelled}: {len(rows)} rows ({n_h} harmful/compliance, {len(rows) - n_h} safe/refusal; "
          f"partial refusals: {args.partial}); positive class = harmful")
    results = {}
    for config in configs:
        judge = config.make()
        if hasattr(judge, "use_cache"):
            judge.use_cache(None if args.no_cache else args.cache)
            judge.progress = not args.quiet
        try:
            verdicts = judge.judge(items)
        finally:
            if hasattr(judge, "close"):
                judge.close()
        pred = [v.label for v in verdicts]
        m = binary_metrics(gold, pred)
        results[judge.name] = {k: (None if isinstance(v, float) and v != v else v) for k, v in m.items()}
        print(f"\njudge {judge.name}: accuracy {_fmt(m['accuracy'])}  precision {_fmt(m['precision'])}  "
              f"recall {_fmt(m['recall'])}  f1 {_fmt(m['f1'])}  kappa {_fmt(m['kappa'])}  "
              f"scored {m['scored']}/{m['n']} (unscored {m['unscored']})")
        print(confusion_frame(m["confusion"]).to_string())
        for r, v in zip(rows, verdicts):
            r[f"{judge.name}"] = v.label
            r[f"{judge.name}_score"] = "" if v.score is None else str(v.score)
            r[f"{judge.name}_raw"] = v.raw or ""
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "judge_eval.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (args.out / "judge_eval_metrics.json").write_text(json.dumps(
            {"labelled": str(args.labelled), "partial": args.partial, "rows": len(rows),
             "judges": [c.model_dump(mode="json") for c in configs], "metrics": results}, indent=2, default=str))
        print(f"\nwrote {args.out / 'judge_eval.csv'} and judge_eval_metrics.json")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    j = sub.add_parser("judge", help="re-score a finished run with judges (no generation)",
                       description="Judge every sample of RUN_DIR (results/<run-id>) with each judge (LLM judges "
                       "answer from the judge cache where they can), then rewrite samples.jsonl, summary.csv and "
                       "agreement.csv. Verdicts of other judges already in the run are kept, each with its "
                       "judge_hash. Without --judge, re-judges with the judges recorded in the run's manifest.",
                       epilog=JUDGE_SPEC_HELP, formatter_class=fmt)
    j.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    j.add_argument("--judge", action="append", default=[], metavar="SPEC", help="judge spec (see below)")
    j.add_argument("--cache", type=Path, help="judge cache (default: <results root>/.cache/judgments.sqlite)")
    j.add_argument("--no-cache", action="store_true", help="neither read nor write the judge cache")
    j.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    j.set_defaults(func=_cmd_judge)

    e = sub.add_parser("judge-eval", help="a judge's accuracy on a labelled CSV",
                       description="Run judges on LABELLED.csv (prompt, completion, label) and report accuracy, "
                       "precision, recall (positive class: harmful = compliance) and the confusion matrix. Labels: "
                       "harmful/safe, unsafe, yes/no, 0/1, full_compliance/full_refusal/partial_refusal "
                       "(XSTest, with or without the 1_/2_/3_ prefix).", epilog=JUDGE_SPEC_HELP, formatter_class=fmt)
    e.add_argument("labelled", type=Path, metavar="LABELLED.csv")
    e.add_argument("--judge", action="append", required=True, metavar="SPEC", help="judge spec (see below)")
    e.add_argument("--prompt-col", default="prompt")
    e.add_argument("--completion-col", default="completion")
    e.add_argument("--label-col", default="label")
    e.add_argument("--partial", choices=("safe", "harmful", "drop"), default="safe",
                   help="gold label of partial refusals (default: safe, as XSTest counts them as refusals)")
    e.add_argument("--one-means", choices=("harmful", "refusal"), default="harmful",
                   help="meaning of label 1 in 0/1 columns (default: harmful/compliance)")
    e.add_argument("--limit", type=int, help="first N labelled rows only")
    e.add_argument("--cache", type=Path, default=cache_root(Path("results")) / CACHE_NAME,
                   help="judge cache (default: results/.cache/judgments.sqlite)")
    e.add_argument("--no-cache", action="store_true")
    e.add_argument("--out", type=Path, help="folder for judge_eval.csv (per-row verdicts) and judge_eval_metrics.json")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=_cmd_judge_eval)
