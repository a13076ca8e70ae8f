"""Outputs of ``harness regress``: the console table, JUnit XML and Markdown (one row or
testcase per cell, each with its n, unpaired prompts, exact bound and minimum provable margin)."""

from __future__ import annotations

import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.results.formatting import pct, pts
from harness.results.regress_decision import CellResult, GateResult, GateSettings


def rule_text(settings: GateSettings, n_cells: int) -> str:
    level = f"{100 * (1 - settings.alpha):g}%"
    return (f"pass iff the margin (ASR {100 * settings.max_asr_increase:g} pts, over-refusal "
            f"{100 * settings.max_overrefusal_increase:g} pts) is at least the cell's minimum provable margin, the "
            f"exact one-sided {level} upper bound of the increase (Tango's score, exact unconditional; prompts scored "
            f"in one run only count as newly harmful) is within it, and the prompt-clustered bootstrap bound "
            f"({settings.n_boot} replicates, seed {settings.seed}) agrees; regression iff not, and McNemar's exact "
            f"one-sided test (Holm over {n_cells} cells) is significant at α = {settings.alpha:g}; inconclusive "
            f"otherwise, always when the margin is below what n prompts can show ("
            + ("allowed" if settings.allow_inconclusive else "fails the gate") + ")")


def table_rows(result: GateResult) -> tuple[list[str], list[list[str]]]:
    level = f"{100 * (1 - result.settings.alpha):g}%"
    head = ["cell", "n", "unpaired", "baseline %", "candidate %", "Δ pts", f"{level} bound", "bootstrap bound",
            "new/fixed", "McNemar p (Holm)", "margin pts", "min margin", "verdict"]
    rows = []
    for c in result.cells:
        ex, iv = c.exact, c.interval
        delta = (c.candidate_rate - c.baseline_rate) if c.n else math.nan
        rows.append([c.key.label(), str(c.n), str(c.unpaired), pct(c.baseline_rate), pct(c.candidate_rate),
                     pts(delta), pts(ex.upper if ex else None), pts(iv.high if iv else None),
                     f"{c.mcnemar.b}/{c.mcnemar.c}", f"{c.mcnemar.p_value:.3g} ({c.p_adjusted:.3g})",
                     f"{100 * c.margin:g}", pct(ex.min_margin if ex else math.nan), c.verdict.upper()])
    return head, rows


def verdict_line(result: GateResult) -> str:
    counts = result.counts
    status = "PASSED" if result.passed else "FAILED"
    return (f"regression gate {status}: {counts['pass']} pass, {counts['regression']} regression, "
            f"{counts['inconclusive']} inconclusive of {len(result.cells)} cells")


def print_gate(result: GateResult) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    head, rows = table_rows(result)
    table = Table(title=f"baseline {result.baseline} vs candidate {result.candidate}", title_justify="left")
    for h in head:
        table.add_column(h, justify="left" if h in ("cell", "verdict") else "right",
                         overflow="fold" if h == "cell" else "ellipsis", no_wrap=h != "cell")
    for row in rows:
        table.add_row(*[escape(x) for x in row])
    console.print(table)
    for model, (b, c) in result.fingerprints.items():
        same = " (same weights)" if b == c else ""
        console.print(f"  model {model}: fingerprint {b} → {c}{same}", markup=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"  note: {note}", markup=False, soft_wrap=True)
    for c in result.cells:
        if c.failed:
            console.print(f"  {c.verdict.upper()} {c.key.label()}: {c.reason}", markup=False, soft_wrap=True)
    console.print("  rule: " + rule_text(result.settings, len(result.cells)), markup=False, soft_wrap=True)
    console.print(verdict_line(result), markup=False, soft_wrap=True)


def _detail(c: CellResult) -> str:
    ex, iv = c.exact, c.interval
    return (f"n={c.n} prompts ({c.n_clusters} clusters), {c.unpaired} unpaired (counted as newly harmful), "
            f"{c.not_shared} not shared; baseline {pct(c.baseline_rate)}%, candidate {pct(c.candidate_rate)}%; "
            f"exact upper bound {pts(ex.upper if ex else None)} pts (p = "
            f"{'—' if ex is None else f'{ex.p_value:.4g}'}), minimum provable margin "
            f"{pct(ex.min_margin if ex else math.nan)} pts, margin {100 * c.margin:g} pts; bootstrap bound "
            f"{pts(iv.high if iv else None)}; newly harmful {c.mcnemar.b}, fixed {c.mcnemar.c}; McNemar "
            f"p={c.mcnemar.p_value:.4g} (Holm {c.p_adjusted:.4g})")


def junit_xml(result: GateResult) -> str:
    """JUnit XML: one testcase per cell; a failed cell is a <failure>, an inconclusive one that
    the settings allow is <skipped>."""
    counts = result.counts
    failures = counts["regression"] + (0 if result.settings.allow_inconclusive else counts["inconclusive"])
    skipped = counts["inconclusive"] if result.settings.allow_inconclusive else 0
    suites = ET.Element("testsuites", name="harness regress", tests=str(len(result.cells)), failures=str(failures))
    suite = ET.SubElement(suites, "testsuite", name="harness regress", tests=str(len(result.cells)),
                          failures=str(failures), errors="0", skipped=str(skipped))
    props = ET.SubElement(suite, "properties")
    for name, value in (("baseline", result.baseline), ("candidate", result.candidate),
                        ("rule", rule_text(result.settings, len(result.cells)))):
        ET.SubElement(props, "property", name=name, value=value)
    for c in result.cells:
        k = c.key
        classname = ".".join(p for p in (k.kind, k.model, k.dataset, k.attack) if p)
        case = ET.SubElement(suite, "testcase", classname=classname, name=f"{k.setting} [{k.judge}]", time="0")
        case_props = ET.SubElement(case, "properties")
        for name, value in (("n", c.n), ("unpaired", c.unpaired), ("verdict", c.verdict)):
            ET.SubElement(case_props, "property", name=name, value=str(value))
        detail = _detail(c)
        if c.verdict == "regression" or (c.verdict == "inconclusive" and not result.settings.allow_inconclusive):
            failure = ET.SubElement(case, "failure", message=f"{c.verdict}: {c.reason}", type=c.verdict)
            failure.text = detail
        elif c.verdict == "inconclusive":
            ET.SubElement(case, "skipped", message=f"inconclusive (allowed): {c.reason}")
        ET.SubElement(case, "system-out").text = detail
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def markdown(result: GateResult) -> str:
    from harness.results.compare import md_cell

    head, rows = table_rows(result)
    icon = {"PASS": "✅", "REGRESSION": "❌", "INCONCLUSIVE": "⚠️"}
    lines = [f"## {'✅' if result.passed else '❌'} {verdict_line(result)}", "",
             f"Baseline `{md_cell(result.baseline)}`, candidate `{md_cell(result.candidate)}`.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        row = row[:-1] + [f"{icon.get(row[-1], '')} {row[-1]}"]
        lines.append("| " + " | ".join(md_cell(x) for x in row) + " |")
    lines.append("")
    failed = [c for c in result.cells if c.failed]
    if failed:
        lines += ["**Why:**", ""] + [f"- {md_cell(c.key.label())}: {md_cell(c.verdict)} — {md_cell(c.reason)}"
                                     for c in failed] + [""]
    for model, (b, c) in result.fingerprints.items():
        lines.append(f"- model `{md_cell(model)}`: fingerprint `{b}` → `{c}`")
    lines += [f"- note: {md_cell(n)}" for n in result.notes]
    lines += [f"- rule: {md_cell(rule_text(result.settings, len(result.cells)))}", ""]
    return "\n".join(lines)


def write_outputs(result: GateResult, junit: Path | None, md: Path | None) -> None:
    for path, text in ((junit, junit_xml(result) if junit else ""), (md, markdown(result) if md else "")):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
