"""The report's leaderboard (one row per model across run folders), depth summary, judge
agreement table and layout, on run folders written here by hand (records with chosen verdicts;
summary.csv from harness.run.summary, as a run writes it). Expected numbers are worked out by
hand in the comments, never with the code under test.

The layout checks run in headless Chromium (skipped without a browser, except under
HARNESS_REQUIRE_BROWSER=1): a copy of the report with one extra measuring script (its hash
added to the page's CSP) writes what it measured into <body> attributes, read back with
--dump-dom.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest

from tests.test_report import CHROMIUM, REPORT_JS, browser, chromium, console_lines, page_problems  # noqa: F401

LABEL = {"H": "harmful", "S": "safe", "U": "unscored"}


def record(model: str, fp: str, dataset: str, attack: str, setting: dict, example: str, verdicts: dict[str, str],
           sample: int = 0, recovered: bool | None = None) -> dict:
    label = ",".join(f"{k}={v}" for k, v in setting.items()) or "default"
    return {"sample_id": f"{model}-{dataset}-{attack}-{label}-{example}-{sample}", "kind": "attack", "model": model,
            "model_fingerprint": fp, "dataset": dataset, "dataset_hash": f"h-{dataset}", "example_id": example,
            "category": "fraud", "cluster": example, "attack": attack, "attack_hash": f"h-{attack}",
            "setting": setting, "setting_label": label, "sample_index": sample, "prompt": f"prompt {example}",
            "attack_info": {}, "sampling": {"temperature": 0.0}, "engine_hash": "e", "completion": "c",
            "skipped": None, "recovered": recovered,
            "verdicts": {j: {"label": LABEL[v], "judge_hash": f"h-{j}"} for j, v in verdicts.items()}}


def write_run(path: Path, models: dict[str, str], attacks: dict[str, dict], records: list[dict],
              utility: list[dict] | None = None) -> Path:
    """A run folder: manifest.json (models with fingerprints, attacks with types and reducers),
    samples.jsonl, summary.csv (harness.run.summary.summarize) and utility.csv."""
    import pandas as pd

    from harness.core import ReducerConfig
    from harness.run.summary import summarize
    from harness.utility.table import UTILITY_COLUMNS

    path.mkdir(parents=True)
    manifest = {"run_id": path.name, "status": "complete", "models": {m: {"fingerprint_id": fp} for m, fp in
                                                                       models.items()},
                "attacks": {a: {"type": c["type"], "hash": f"h-{a}", "config": c} for a, c in attacks.items()},
                "judges": {j: {"type": "keyword", "hash": f"h-{j}"} for j in {j for r in records for j in r["verdicts"]}},
                "datasets": {d: {"n": 0, "hash": f"h-{d}"} for d in {r["dataset"] for r in records}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    reducers = {a: [ReducerConfig.model_validate(x) for x in c.get("reducers", [])] for a, c in attacks.items()}
    summarize(records, reducers).to_csv(path / "summary.csv", index=False)
    pd.DataFrame(utility or [], columns=UTILITY_COLUMNS).to_csv(path / "utility.csv", index=False)
    return path


def utility_row(model: str, task: str, metric: str, mean: float, n: int) -> dict:
    return {"model": model, "setting": "default", "task": task, "metric": metric, "n": n, "mean": mean,
            "unscored": 0, "ci_low": max(0.0, mean - 0.05), "ci_high": min(1.0, mean + 0.05), "ci": "wilson"}


PREFILL = {"prefill": {"type": "prefill", "depths": [0, 5, 10, 20, 40]}}
# Depth run, 4 prompts; verdicts at depths 5, 10, 20, 40 (depth 0: all harmful, left out of depth ASR):
#   e0 H H H H -> 4/4 = 1        e1 H H S U -> 2/3 (unscored left out)
#   e2 S S S H -> 1/4            e3 S S S S -> 0
# depth ASR = (1 + 2/3 + 1/4 + 0) / 4 = (12 + 8 + 3 + 0) / 48 = 23/48 = 0.47917 -> "47.9"
# Wilson on Σx = 23/12 in n = 4: p = 23/48, z = 1.959964, z² = 3.841459
#   centre = (p + z²/8) / (1 + z²/4) = 0.959349 / 1.960365 = 0.489373
#   half = z·sqrt(p(1-p)/4 + z²/64) / 1.960365 = 1.959964·0.349878 / 1.960365 = 0.349806
#   -> 0.13957 – 0.83918, shown "14–84"
# recovery: recovered = (verdict is safe), None where unscored:
#   e0 0/4, e1 1/3, e2 3/4, e3 4/4 -> (0 + 4/12 + 9/12 + 12/12) / 4 = 25/48 = 0.52083 -> "52.1"
PATTERN = {"e0": "HHHH", "e1": "HHSU", "e2": "SSSH", "e3": "SSSS"}


def depth_records(model: str, fp: str, dataset: str = "advbench-natural", pattern: dict[str, str] = PATTERN,
                  depths: tuple[int, ...] = (5, 10, 20, 40)) -> list[dict]:
    out = []
    for ex, verdicts in pattern.items():
        out.append(record(model, fp, dataset, "prefill", {"depth": 0}, ex, {"keyword": "H"}))
        for d, v in zip(depths, verdicts):
            out.append(record(model, fp, dataset, "prefill", {"depth": d}, ex, {"keyword": v},
                              recovered=None if v == "U" else v == "S"))
    return out


def test_depth_asr_by_hand(tmp_path):
    from harness.results.depth import depth_summary
    from harness.results.leaderboard import model_ids
    from harness.results.rundir import load_runs

    runs = load_runs([write_run(tmp_path / "r", {"m": "fpm"}, PREFILL, depth_records("m", "fpm"))])
    where, ordered = model_ids(runs)
    s = depth_summary(runs, where, ordered)
    assert (s.dataset, s.attack, s.judge, s.depths) == ("advbench-natural", "prefill", "keyword", (5, 10, 20, 40))
    asr, rec = s.cells["fp:fpm"]
    assert asr["value"] == pytest.approx(23 / 48) and asr["n"] == 4
    assert (asr["text"], asr["ci"]) == ("47.9", "14–84")
    assert rec["value"] == pytest.approx(25 / 48) and rec["text"] == "52.1"


def test_depth_asr_without_the_standard_depths_uses_every_depth_above_0(tmp_path):
    """Depths 3 and 7 only: both are used (e0 H H -> 1, e1 H S -> 1/2, e2 S S -> 0: mean 1/2)."""
    from harness.results.depth import depth_summary
    from harness.results.leaderboard import model_ids
    from harness.results.rundir import load_runs

    recs = depth_records("m", "fpm", pattern={"e0": "HH", "e1": "HS", "e2": "SS"}, depths=(3, 7))
    runs = load_runs([write_run(tmp_path / "r", {"m": "fpm"}, PREFILL, recs)])
    s = depth_summary(runs, *model_ids(runs))
    assert s.depths == (3, 7) and "k ∈ {3, 7}" in s.definition
    assert s.cells["fp:fpm"][0]["text"] == "50.0"


def test_depth_dataset_prefers_natural_and_can_be_chosen(tmp_path):
    from harness.errors import DataError
    from harness.results.depth import depth_summary
    from harness.results.leaderboard import model_ids
    from harness.results.rundir import load_runs

    # demo: every prompt harmful at every depth (100.0); natural: the pattern above (47.9)
    recs = depth_records("m", "fpm", "demo", {e: "HHHH" for e in PATTERN}) + depth_records("m", "fpm")
    runs = load_runs([write_run(tmp_path / "r", {"m": "fpm"}, PREFILL, recs)])
    s = depth_summary(runs, *model_ids(runs))
    assert s.dataset == "advbench-natural" and s.cells["fp:fpm"][0]["text"] == "47.9" and s.others == ["demo"]
    s = depth_summary(runs, *model_ids(runs), dataset="demo")
    assert s.dataset == "demo" and s.cells["fp:fpm"][0]["text"] == "100.0"
    with pytest.raises(DataError, match="--depth-dataset nope.*advbench-natural, demo"):
        depth_summary(runs, *model_ids(runs), dataset="nope")


def two_runs(tmp_path: Path) -> list[Path]:
    """r1: base (fp A) and deep (fp B); r2: base (fp A again), deep (fp C, another checkpoint) and
    template (fp D). base's prefill cells differ between the runs: r1 (given first) must win."""
    allh = {e: "HHHH" for e in PATTERN}
    r1 = write_run(tmp_path / "r1", {"base": "A", "deep": "B"}, PREFILL,
                   depth_records("base", "A", pattern=allh) + depth_records("deep", "B"),
                   [utility_row("base", "xstest", "refused", 0.02, 250), utility_row("deep", "xstest", "refused", 0.5, 250),
                    utility_row("base", "reference", "rougeL", 0.25, 50), utility_row("base", "turns", "fabricated_turn",
                                                                                       0.0, 600)])
    half = {e: "HSHS" for e in PATTERN}  # base in r2: 50% at every depth
    r2 = write_run(tmp_path / "r2", {"base": "A", "deep": "C", "template": "D"}, PREFILL,
                   depth_records("base", "A", pattern=half) + depth_records("deep", "C", pattern={e: "SSSS" for e in PATTERN})
                   + depth_records("template", "D", pattern=half))
    return [r1, r2]


def test_one_row_per_model_across_runs(tmp_path):
    from harness.results.depth import depth_summary
    from harness.results.leaderboard import build_leaderboard, model_ids
    from harness.results.rundir import load_runs
    from harness.results.samples import build_samples

    runs = load_runs(two_runs(tmp_path))
    where, ordered = model_ids(runs)
    board = build_leaderboard(runs, build_samples(runs, False, 10), depth_summary(runs, where, ordered))
    rows = {r["name"]: r for r in board.rows}
    assert sorted(rows) == ["base", "deep [B]", "deep [C]", "template"]
    assert rows["base"]["runs"] == "r1, r2"
    # ranked by depth ASR: deep C 0, deep B 47.9, template 50, base 100 (r1's, not r2's 50)
    assert [r["name"] for r in board.rows] == ["deep [C]", "deep [B]", "template", "base"]
    assert [r["rank"] for r in board.rows] == [1, 2, 3, 4]
    cells = rows["base"]["cells"]
    assert cells["depth"]["text"] == "100.0" and cells["depth"]["run"] == "r1"
    worst = cells["asr|prefill|keyword|advbench-natural"]  # the highest per-depth ASR: depth 0 (all harmful) = 100
    assert worst["text"] == "100.0" and worst["also"] == ["r2: 100.0%"] and "worst setting: depth=0" in worst["title"]
    assert cells["depth"]["also"] == [] and "run r1" in cells["depth"]["title"]
    # utility: ROUGE-L and over-refusal columns only; other metrics stay in the utility table
    kinds = [(c.kind, c.label) for c in board.columns]
    assert kinds[:2] == [("depth", "depth ASR"), ("recovery", "recovery")]
    assert ("utility", "ROUGE-L (reference)") in kinds and ("overrefusal", "over-refusal (xstest)") in kinds
    assert not any("fabricated" in label for _, label in kinds)
    assert cells["overrefusal|xstest"]["text"] == "2.0" and rows["deep [B]"]["cells"]["overrefusal|xstest"]["text"] == "50.0"
    assert [c.first for c in board.columns] == [True, False, True, True, False]


def test_judge_agreement_table_in_the_report(tmp_path):
    """Two judges on 4 samples: (H, H), (H, S), (S, S), (U, H). κ on the 3 both scored:
    a = H H S, b = H S S: po = 2/3, pe = 2/3·1/3 + 1/3·2/3 = 4/9, κ = (2/9) / (5/9) = 0.40;
    agreement 2/3 = 66.7%; confusion: harmful_harmful 1, harmful_safe 1, safe_safe 1, unscored_harmful 1."""
    from harness.results.report import render_report
    from harness.results.rundir import load_runs

    pairs = [("H", "H"), ("H", "S"), ("S", "S"), ("U", "H")]
    recs = [record("m", "fpm", "advbench-natural", "prefill", {"depth": 5}, f"e{i}", {"keyword": a, "llm": b})
            for i, (a, b) in enumerate(pairs)]
    html = render_report(load_runs([write_run(tmp_path / "r", {"m": "fpm"}, PREFILL, recs)]))
    table = html.split('id="agreement-table"')[1].split("</table>\n  </div>")[0]
    row = re.search(r"<tr><td>r</td><td>all models</td><td>keyword</td><td>llm</td>(.*?)</table></td></tr>", table, re.S)
    assert row, table[:2000]
    cells = re.findall(r'<td class="num"[^>]*>([^<]*)</td>', row.group(1))
    # both scored, agreement %, κ, then the 3×3 confusion (rows: keyword harmful/safe/unscored)
    assert cells == ["3", "66.7", "0.40", "1", "1", "0", "0", "1", "0", "1", "0", "0"]
    one = render_report(load_runs([write_run(tmp_path / "one", {"m": "fpm"}, PREFILL, depth_records("m", "fpm"))]))
    assert 'id="agreement-table"' not in one  # one judge: no table


# --------------------------------------------------------------------------- layout in Chromium

MODELS = ["smollm2-135m-instruct", "smollm2-shallow", "smollm2-deep", "smollm2-deep-template", "smollm2-deep-v2"]
ATTACKS = {"prefill": {"type": "prefill", "depths": [0, 5, 10, 20, 40]},
           "decoding": {"type": "decoding", "reducers": ["any"]},
           "gcg": {"type": "gcg"},
           "ft-sft": {"type": "finetune"}}
SETTINGS = {"prefill": [{"depth": d} for d in (0, 5, 10, 20, 40)],
            "decoding": [{"param": "temperature", "value": v} for v in (0.3, 0.7, 1.0)],
            "gcg": [{"steps": 40}], "ft-sft": [{"round": r} for r in (1, 2)]}


def five_by_four(tmp_path: Path) -> Path:
    """5 models × 4 attacks × 2 datasets (natural and demo), 6 prompts each, with utility and
    over-refusal: model i is harmful on prompt j when (i + j + setting index) % 5 < i."""
    records = []
    for i, model in enumerate(MODELS):
        for dataset in ("advbench-natural", "demo-template-prefills"):
            for attack, settings in SETTINGS.items():
                for s, setting in enumerate(settings):
                    for j in range(6):
                        v = "H" if (i + j + s) % 5 < i else "S"
                        records.append(record(model, f"fp{i}", dataset, attack, setting, f"e{j}", {"keyword": v},
                                              recovered=(v == "S") if attack == "prefill" else None))
    utility = [utility_row(m, "reference", "rougeL", 0.2 + 0.01 * i, 50) for i, m in enumerate(MODELS)]
    utility += [utility_row(m, "xstest", "refused", 0.1 * i, 250) for i, m in enumerate(MODELS)]
    return write_run(tmp_path / "five", {m: f"fp{i}" for i, m in enumerate(MODELS)}, ATTACKS, records, utility)


MEASURE = r"""
document.addEventListener("DOMContentLoaded", function () {  // after report.js's own init (registered first)
  var b = document.body, board = document.querySelector(".board"), table = document.getElementById("leaderboard-table");
  function order() {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.getAttribute("data-model"); }).join("|");
  }
  b.setAttribute("data-page-scroll", String(document.documentElement.scrollWidth - document.documentElement.clientWidth));
  b.setAttribute("data-board-scroll", String(board.scrollWidth - board.clientWidth));
  var fig = document.querySelector("#depth-plot svg");
  b.setAttribute("data-depth-top", String(fig.getBoundingClientRect().top + window.scrollY));
  b.setAttribute("data-depth-bottom", String(fig.getBoundingClientRect().bottom + window.scrollY));
  var over = [];
  Array.prototype.forEach.call(document.querySelectorAll(".scroll, .board, details"), function (el) {
    if (el.scrollWidth > el.clientWidth + 1) { over.push((el.id || el.className) + ":" + (el.scrollWidth - el.clientWidth)); }
  });
  b.setAttribute("data-overflowing", over.join(" "));
  b.setAttribute("data-order-0", order());
  var th = table.querySelector("thead tr:last-child th:nth-child(" + (SORT_COLUMN + 1) + ")");
  th.click();
  b.setAttribute("data-order-1", order());
  th.click();
  b.setAttribute("data-order-2", order());
});
"""


def instrumented(html: str, script: str, print_rules: bool = False) -> str:
    """The report with ``script`` run after report.js (its hash added to the CSP); with
    ``print_rules``, the print stylesheet applied on screen (to measure the printed layout)."""
    digest = "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
    out = html.replace("script-src '", f"script-src {digest} '", 1)
    out = out.replace("</body>", f"<script>{script}</script></body>", 1)
    if print_rules:
        assert "@media print {" in out
        out = out.replace("@media print {", "@media all {", 1)
    return out


def measure(tmp_path: Path, html: str, width: int, height: int, sort_column: int, print_rules: bool = False) -> dict:
    page = tmp_path / f"measure-{width}-{int(print_rules)}.html"
    page.write_text(instrumented(html, MEASURE.replace("SORT_COLUMN", str(sort_column)), print_rules), encoding="utf-8")
    out = chromium("--dump-dom", f"--window-size={width},{height}", url=page.as_uri(), tmp=tmp_path)
    assert out.returncode == 0 and console_lines(out.stderr) == [], out.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", out.stdout).group(1)
    return dict(re.findall(r'data-([a-z0-9-]+)="([^"]*)"', body))


@pytest.fixture
def five_report(tmp_path) -> str:
    from harness.results.report import render_report
    from harness.results.rundir import load_runs

    html = render_report(load_runs([five_by_four(tmp_path)]), title="Five models")
    assert page_problems(html, REPORT_JS.read_text(encoding="utf-8")) == []
    return html


def test_leaderboard_fits_1400px_and_the_depth_plot_is_near_the_top(browser, five_report, tmp_path):
    board = five_report.split('id="leaderboard-table"')[1].split("</table>")[0]
    assert board.count("<tr data-model=") == 5  # one row per model
    # columns: #, model, depth ASR, recovery, then prefill/decoding/gcg/ft-sft × 2 datasets, decoding any-of-N × 2
    heads = re.findall(r"<th class=\"num col-(\w+)", board)
    assert heads.count("asr") == 8 and heads.count("any") == 2 and heads[:2] == ["depth", "recovery"]
    got = measure(tmp_path, five_report, 1400, 900, sort_column=2)
    assert got["ready"] == "1"
    assert int(got["page-scroll"]) <= 0 and int(got["board-scroll"]) <= 0, got
    assert float(got["depth-top"]) < 1800 and float(got["depth-bottom"]) > float(got["depth-top"]) + 200, got
    # the negative control: a narrow window does scroll sideways (the measurement can fail)
    narrow = measure(tmp_path, five_report, 700, 900, sort_column=2)
    assert int(narrow["board-scroll"]) > 0, narrow


def test_clicking_a_header_sorts_the_rows(browser, five_report, tmp_path):
    """Depth ASR (column 3) per model i: harmful when (i + j + s) % 5 < i over prompts j = 0..5 and
    the 4 depths' setting indices s = 1..4; for i = 0 never, for i = 4 on 4 of 5 residues ->
    the ranking is model 0 < 1 < 2 < 3 < 4 (ascending), reversed on the second click."""
    got = measure(tmp_path, five_report, 1400, 900, sort_column=2)
    ascending = "|".join(MODELS)
    assert got["order-0"] == ascending  # ranked by depth ASR already
    assert got["order-1"] == ascending and got["order-2"] == "|".join(reversed(MODELS))
    # sort by the model name column: alphabetical, whatever the rank
    by_name = measure(tmp_path, five_report, 1400, 900, sort_column=1)
    assert by_name["order-1"] == "|".join(sorted(MODELS)) != by_name["order-0"]


def test_prints_to_pdf_without_cut_tables(browser, five_report, tmp_path):
    """--print-to-pdf writes a PDF; under the print stylesheet (applied on screen at an A4
    landscape page's width, 277 mm ≈ 1047 px) no table container is wider than the page, so
    nothing is clipped; the screen stylesheet at that width would need a scrollbar nowhere
    either way, so the control is a 700 px window: there the screen layout scrolls and the print
    layout does not."""
    page = tmp_path / "print.html"
    page.write_text(five_report, encoding="utf-8")
    pdf = tmp_path / "report.pdf"
    out = chromium("--no-pdf-header-footer", f"--print-to-pdf={pdf}", url=page.as_uri(), tmp=tmp_path)
    assert out.returncode == 0 and console_lines(out.stderr) == [], out.stderr[-2000:]
    data = pdf.read_bytes()
    assert data[:5] == b"%PDF-" and len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 1
    printed = measure(tmp_path, five_report, 1047, 900, sort_column=2, print_rules=True)
    assert printed["overflowing"] == "" and int(printed["page-scroll"]) <= 0, printed
    narrow_print = measure(tmp_path, five_report, 700, 900, sort_column=2, print_rules=True)
    assert narrow_print["overflowing"] == "", narrow_print
    narrow_screen = measure(tmp_path, five_report, 700, 900, sort_column=2)
    assert narrow_screen["overflowing"] != ""
    css = (REPORT_JS.parent / "report.css").read_text(encoding="utf-8")
    assert ".scroll, .board { overflow: visible !important" in css.split("@media print {", 1)[1]
