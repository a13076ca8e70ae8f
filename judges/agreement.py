"""Judge agreement (percent agreement, Cohen's κ, confusion counts), mean judge scores, and judge accuracy.

Both compare binary verdicts (harmful = positive class). Pairwise agreement is computed on
the samples both judges scored; unscored counts are reported beside it, and the confusion
counts (``harmful_safe``: judge a said harmful, judge b safe; ``unscored`` also stands for any
label other than harmful/safe) cover every sample both judges gave a verdict. Accuracy,
precision and recall are computed on the rows the judge scored; the confusion matrix
keeps an ``unscored`` column so failures stay visible.
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from harness.runlog import SampleRecord

AGREEMENT = "agreement.csv"
BINARY = ("harmful", "safe")
LABELS = BINARY + ("unscored",)
# confusion counts: "<judge a's label>_<judge b's label>"
CONFUSION_COLUMNS = [f"{a}_{b}" for a in LABELS for b in LABELS]
AGREEMENT_COLUMNS = ["judge_a", "judge_b", "n", "agree", "percent_agreement", "kappa", "unscored_a",
                     "unscored_b"] + CONFUSION_COLUMNS
SCORES = "judge_scores.csv"
SCORE_COLUMNS = ["model", "dataset", "attack", "setting", "judge", "n_scored", "mean_score"]


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's κ of two label sequences (scikit-learn); NaN when undefined (one class only)."""
    if not a:
        return float("nan")
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = cohen_kappa_score(list(a), list(b), labels=list(BINARY))
    return float(k) if k is not None and math.isfinite(k) else float("nan")


def pairwise_agreement(records: Iterable[SampleRecord]) -> pd.DataFrame:
    """One row per judge pair over attack records (skipped ones excluded)."""
    verdicts: list[dict[str, str]] = []
    judges: list[str] = []
    for r in records:
        if r.get("kind", "attack") != "attack" or r.get("skipped"):
            continue
        labels = {j: v["label"] for j, v in (r.get("verdicts") or {}).items()}
        verdicts.append(labels)
        judges += [j for j in labels if j not in judges]
    rows = []
    for ja, jb in combinations(judges, 2):
        both = [(v[ja], v[jb]) for v in verdicts if v.get(ja) in BINARY and v.get(jb) in BINARY]
        agree = sum(x == y for x, y in both)
        confusion = dict.fromkeys(CONFUSION_COLUMNS, 0)
        for v in verdicts:
            if ja in v and jb in v:
                confusion[f"{_label(v[ja])}_{_label(v[jb])}"] += 1
        rows.append(dict(judge_a=ja, judge_b=jb, n=len(both), agree=agree,
                         percent_agreement=100 * agree / len(both) if both else float("nan"),
                         kappa=cohen_kappa([x for x, _ in both], [y for _, y in both]),
                         unscored_a=sum(v.get(ja) == "unscored" for v in verdicts),
                         unscored_b=sum(v.get(jb) == "unscored" for v in verdicts), **confusion))
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def _label(label: Any) -> str:
    return label if label in BINARY else "unscored"


def score_table(records: Iterable[SampleRecord]) -> pd.DataFrame:
    """Mean judge score (e.g. HEx-PHI 1–5, StrongREJECT 0..1) per model × dataset × attack × setting × judge,
    over scored samples."""
    sums: dict[tuple, list[float]] = {}
    for r in records:
        if r.get("kind", "attack") != "attack" or r.get("skipped"):
            continue
        for judge, v in (r.get("verdicts") or {}).items():
            if v.get("label") in BINARY and v.get("score") is not None:
                key = (r["model"], r["dataset"], r["attack"], r["setting_label"], judge)
                sums.setdefault(key, []).append(float(v["score"]))
    rows = [dict(zip(SCORE_COLUMNS, key + (len(xs), sum(xs) / len(xs)))) for key, xs in sums.items()]
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def write_judge_tables(run_dir: Path, records: Iterable[SampleRecord]) -> None:
    """Write ``agreement.csv`` (when records carry two or more judges) and ``judge_scores.csv``."""
    records = list(records)
    table = pairwise_agreement(records)
    if not table.empty:
        table.to_csv(Path(run_dir) / AGREEMENT, index=False)
    scores = score_table(records)
    if not scores.empty:
        scores.to_csv(Path(run_dir) / SCORES, index=False)


def binary_metrics(gold: Sequence[str], pred: Sequence[str]) -> dict[str, Any]:
    """Accuracy/precision/recall/F1 of ``pred`` (harmful|safe|unscored) against ``gold`` (harmful|safe)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    confusion = {g: {p: 0 for p in ("harmful", "safe", "unscored")} for g in BINARY}
    for g, p in zip(gold, pred):
        confusion[g][p] += 1
    tp, fn = confusion["harmful"]["harmful"], confusion["harmful"]["safe"]
    fp, tn = confusion["safe"]["harmful"], confusion["safe"]["safe"]
    scored = tp + fn + fp + tn

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
    return dict(n=len(gold), scored=scored, unscored=len(gold) - scored, accuracy=ratio(tp + tn, scored),
                precision=precision, recall=recall, f1=f1, tp=tp, fp=fp, tn=tn, fn=fn,
                kappa=cohen_kappa([g for g, p in zip(gold, pred) if p in BINARY],
                                  [p for p in pred if p in BINARY]),
                confusion=confusion)


def confusion_frame(confusion: dict[str, dict[str, int]]) -> pd.DataFrame:
    """Rows: gold label; columns: judge verdict."""
    df = pd.DataFrame(confusion).T.loc[list(BINARY), ["harmful", "safe", "unscored"]]
    df.index.name = "gold \\ judge"
    return df
