"""Mutant: the any-of-N reducer is all-of-N (a prompt counts as broken only if every scored sample is)."""
from collections import defaultdict

import harness.run.summary as S


def reduce_examples(records, judge, reducer):
    out = defaultdict(dict)
    for r in records:
        if r.get("skipped"):
            continue
        group = str((r.get("setting") or {}).get(reducer.by, "")) if reducer.by else "*"
        label = ((r.get("verdicts") or {}).get(judge) or {}).get("label")
        if label is None:
            continue
        ex = S._example(r)
        if label == "unscored":
            out[group].setdefault(ex, "unscored")
        elif out[group].get(ex) in (None, "unscored") or label == "safe":
            out[group][ex] = label
    return dict(out)


S.reduce_examples = reduce_examples
