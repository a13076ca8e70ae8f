"""Utility metrics: ROUGE (the maintained ``rouge-score`` package), exact match, GSM8K numbers.

- ROUGE is ``rouge_score.rouge_scorer.RougeScorer``'s F-measure. Its tokenizer lowercases
  and keeps ASCII letters and digits only (other characters separate tokens).
- Exact match normalises both sides the SQuAD way: lowercase, drop punctuation, drop the
  articles a/an/the, collapse whitespace. A completion matches if its normalised first
  non-empty line equals the normalised reference (short answers followed by an
  explanation), or if the whole normalised completion does (an answer split over lines).
  ``contains`` is the lenient companion: the normalised reference occurs as whole words in
  the normalised first line (chat models tend to answer "The capital of France is Paris.").
- GSM8K: the prediction is the last number in the completion ("$1,234.50" -> 1234.5); the
  reference is the number after the final "####". Compared as exact decimals.
"""

from __future__ import annotations

import re
import string
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalised first non-empty line, or the whole normalised prediction,
    equals the normalised reference; else 0.0."""
    ref = normalize_answer(reference)
    first = next((line for line in prediction.splitlines() if line.strip()), "")
    return float(normalize_answer(first) == ref or normalize_answer(prediction) == ref)


def contains_answer(prediction: str, reference: str) -> float:
    """1.0 if the normalised reference occurs as whole words in the normalised first non-empty
    line ("The capital of France is Paris." contains "Paris"); a lenient companion to exact
    match for chat models that answer in a sentence."""
    ref = normalize_answer(reference)
    first = next((line for line in prediction.splitlines() if line.strip()), "")
    return float(bool(ref) and f" {ref} " in f" {normalize_answer(first)} ")


@lru_cache(maxsize=8)
def _scorer(types: tuple[str, ...], use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)


def rouge(prediction: str, reference: str, types: Sequence[str] = ("rougeL",),
          use_stemmer: bool = False) -> dict[str, float]:
    """ROUGE F-measures of ``prediction`` against ``reference`` (rouge-score package)."""
    scores = _scorer(tuple(types), use_stemmer).score(reference, prediction)  # score(target, prediction)
    return {t: float(scores[t].fmeasure) for t in types}


# A number: optional sign (not glued to a preceding word/digit, so "3-5" gives 5), an
# optional "$", digits with optional thousands commas, an optional decimal part.
_NUMBER = re.compile(r"(?<![\w.])-?\$?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\$?\.\d+")


def parse_number(text: str) -> Decimal | None:
    """``"$1,234.50"`` -> Decimal('1234.50'); None if it is not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if cleaned.startswith("--") or not cleaned:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def extract_last_number(text: str) -> Decimal | None:
    """The last number in a completion (GSM8K answer extraction); None if there is none."""
    matches = _NUMBER.findall(text)
    for m in reversed(matches):
        value = parse_number(m)
        if value is not None:
            return value
    return None


def gsm8k_reference(answer: str) -> Decimal | None:
    """The number after the last ``####`` of a GSM8K answer; None if absent or not a number."""
    if "####" not in answer:
        return None
    return parse_number(answer.rsplit("####", 1)[1])


def numbers_equal(a: Decimal | None, b: Decimal | None) -> bool:
    return a is not None and b is not None and a == b
