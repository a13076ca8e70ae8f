"""Outputs of the depth diagnostics (``harness.analysis.diagnostics``): each result as a CSV and SVG charts
(``harness.results.plots``), with the columns listed in ``harness.analysis.diagnostics``'s docstring."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

from harness.analysis.diagnostics import GradStats, PositionStats, RefusalByDepth
from harness.results.plots import line_chart

__all__ = ["kl_label", "write_grad", "write_kl", "write_refusal"]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        raise ValueError(f"{path}: nothing to write")
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _curve(rows: list[dict[str, Any]], x: str, y: str) -> list[tuple[float, float]]:
    return [(r[x], r[y]) for r in rows if r.get("n", 1)]


def _band(rows: list[dict[str, Any]], x: str) -> list[tuple[float, float, float]]:
    return [(r[x], r["ci95_low"], r["ci95_high"]) for r in rows if r.get("n", 0) > 1]


def kl_label(a: str, b: str) -> str:
    return f"KL({a} ‖ {b})"


def write_kl(out_dir: Path, stem: str, results: Mapping[tuple[str, str], PositionStats]) -> list[str]:
    """``<stem>.csv`` (a, b, position, n, mean, std, 95% interval) and ``<stem>.svg``."""
    rows, series, bands = [], {}, {}
    for (a, b), stats in results.items():
        these = stats.rows()
        rows += [{"a": a, "b": b, **r} for r in these]
        series[kl_label(a, b)] = _curve(these, "position", "mean")
        bands[kl_label(a, b)] = _band(these, "position")
    _write_csv(out_dir / f"{stem}.csv", rows)
    svg = line_chart(series, title="Per-token KL along the response (mean, 95% CI)", x_label="response token position t",
                     y_label="mean KL (nats)", bands=bands)
    (out_dir / f"{stem}.svg").write_text(svg, encoding="utf-8")
    return [f"{stem}.csv", f"{stem}.svg"]


def write_grad(out_dir: Path, stem: str, results: Mapping[str, GradStats]) -> list[str]:
    """``<stem>.csv`` (model, position, n, mean/std CE, gradient norm), ``<stem>_ce.svg`` and
    ``<stem>_grad_norm.svg``."""
    rows, ce, ce_bands, norms = [], {}, {}, {}
    for name, stats in results.items():
        these = stats.rows()
        rows += [{"model": name, **r} for r in these]
        ce[name] = _curve(these, "position", "mean_ce")
        ce_bands[name] = _band(stats.ce.rows(), "position")
        norms[name] = _curve(these, "position", "grad_norm")
    _write_csv(out_dir / f"{stem}.csv", rows)
    (out_dir / f"{stem}_ce.svg").write_text(line_chart(
        ce, title="Cross-entropy on attack data by position (mean, 95% CI)", x_label="response token position t",
        y_label="mean cross-entropy (nats)", bands=ce_bands), encoding="utf-8")
    (out_dir / f"{stem}_grad_norm.svg").write_text(line_chart(
        norms, title="Gradient norm of the per-position loss", x_label="response token position t",
        y_label="‖∇θ CE_t‖₂"), encoding="utf-8")
    return [f"{stem}.csv", f"{stem}_ce.svg", f"{stem}_grad_norm.svg"]


def write_refusal(out_dir: Path, stem: str, results: Mapping[str, RefusalByDepth]) -> list[str]:
    """``<stem>.csv`` (model, depth, n, skipped, mean/std log P, 95% interval, mean P) and
    ``<stem>.svg`` (mean log P by depth)."""
    rows, series, bands = [], {}, {}
    for name, res in results.items():
        these = res.rows()
        rows += [{"model": name, **r} for r in these]
        series[name] = _curve(these, "depth", "mean_logprob")
        bands[name] = _band(these, "depth")
    _write_csv(out_dir / f"{stem}.csv", rows)
    svg = line_chart(series, title="Refusal log-probability after k prefilled harmful tokens (mean, 95% CI)",
                     x_label="prefill depth k (harmful tokens)", y_label="mean log P(refusal prefix)", bands=bands)
    (out_dir / f"{stem}.svg").write_text(svg, encoding="utf-8")
    return [f"{stem}.csv", f"{stem}.svg"]
