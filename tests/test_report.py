"""`harness report | compare | export` on real run folders, the report checked in headless Chromium.

Run folders come from tests/test_regress.py (``build_runs``: the real harness on two tiny models,
``deep`` answering "I cannot" to everything, ``base`` never refusing), plus a small decoding run
and a diagnostics folder written by harness.analyze's own CSV writer.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_regress import PAYLOAD, build_runs, harness_cli

MARKER = "COMPLETION-MARKER-7f3"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; "
                                    ".ci/run installs it when run as root)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, pool) -> dict[str, Path]:
    from harness.recipes import recipe_from_dict
    from harness.runner import run_recipe
    from harness.store import read_samples, write_samples
    from tests.test_regress import recipe

    out = dict(build_runs(tmp_path_factory.mktemp("gate"), tiny_model, pool))
    results = out["base"].parent
    # A copy of ``base`` whose completions carry markup: the tiny models cannot be made to write
    # it (the prompts and prefills with markup do come through the real harness unchanged).
    payload = results / "base-payload"
    shutil.copytree(out["base"], payload)
    records = read_samples(payload)
    for r in records:
        if r["example_id"] in ("b00", "b01") or r["kind"] == "utility":
            r["completion"] = f"{PAYLOAD} {MARKER} </td></tr></table></script><!--"
    write_samples(payload, records)
    out["base-payload"] = payload
    # decoding sweep with an any-of-N reducer (real generations, HF engine)
    raw = recipe("tiny", tiny_model, results.parent / "bench.jsonl")
    raw.pop("utility")
    raw["datasets"][0]["limit"] = 2
    raw["attacks"] = [{"type": "decoding", "temperatures": [0.7], "top_ps": [0.5], "top_ks": [5],
                       "system_prompts": ["none"], "samples": 2, "sampling": {"max_tokens": 8}, "reducers": ["any"]}]
    run_recipe(recipe_from_dict(raw), out_dir=results, run_id="decoding", engines=pool, progress=False)
    out["decoding"] = results / "decoding"
    out["diag"] = diagnostics_folder(results / "diag")
    return out


def diagnostics_folder(path: Path) -> Path:
    """A ``kind: analyze`` folder with a KL-by-position table written by harness.analyze."""
    import torch

    from harness.analyze import PositionStats, write_kl

    path.mkdir(parents=True)
    stats = PositionStats(mean=torch.tensor([0.9, 0.5, 0.2, 0.1], dtype=torch.float64),
                          std=torch.tensor([0.3, 0.2, 0.1, 0.1], dtype=torch.float64), count=torch.tensor([8, 8, 8, 8]))
    files = write_kl(path, "kl_deep", {("deep", "base"): stats})
    (path / "manifest.json").write_text(json.dumps({"kind": "analyze", "status": "complete", "run_id": "diag",
                                                    "analyses": {"kl": {"type": "kl", "files": files}},
                                                    "models": {}, "files": files}))
    return path


def report_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert m, "no report data"
    return json.loads(m.group(1))


def chromium(*args: str, url: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={tmp / 'profile'}",
                           "--enable-logging=stderr", "--v=0", *args, url],
                          capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    """The page's console messages (and uncaught errors, CSP violations) Chromium logged."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


# --------------------------------------------------------------------------- in the browser


@needs_chromium
def test_console_errors_would_be_seen(tmp_path):
    """The check below is not vacuous: a page with an error, and one whose script a CSP blocks,
    both log CONSOLE lines."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\"script-src "
                    "'sha256-AAAA'\"></head><body><script>document.title='ran'</script></body></html>")
    out = chromium("--dump-dom", url=page.as_uri(), tmp=tmp_path)
    assert any("Content Security Policy" in line for line in console_lines(out.stderr)), out.stderr[-2000:]
    page.write_text("<!DOCTYPE html><html><body><script>console.error('boom'); missing();</script></body></html>")
    out = chromium("--dump-dom", url=page.as_uri(), tmp=tmp_path)
    lines = console_lines(out.stderr)
    assert any('"boom"' in line for line in lines) and any("missing is not defined" in line for line in lines)


@needs_chromium
def test_report_loads_without_errors_and_model_text_stays_inert(runs, tmp_path):
    out_html = tmp_path / "report.html"
    out = harness_cli("report", *(str(runs[k]) for k in ("deep", "base-payload", "decoding", "diag")),
                      "--out", str(out_html), "--show-completions", "--title", "Gate report")
    assert out.returncode == 0, out.stderr
    html = out_html.read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html), "the report must not load anything"
    data = report_data(html)
    ids = [i for i, c in enumerate(data["cells"]) if c["run"] == "base-payload"]
    url = out_html.as_uri() + "#samples=" + ",".join(map(str, ids))

    dump = chromium("--dump-dom", url=url, tmp=tmp_path)
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert console_lines(dump.stderr) == []
    dom = dump.stdout
    assert 'data-ready="1"' in dom  # report.js ran (its CSP hash matched)
    assert re.search(r"<title>Gate report</title>", dom) and "PWNED" not in re.search(r"<title>.*?</title>", dom).group(0)
    assert "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0]
    rows = re.search(r'<tbody id="sample-rows">(.*?)</tbody>', dom, re.S).group(1)
    assert rows.count("<tr>") == len([s for s in data["samples"] if s[0] in ids]) > 0
    # prompt, prefill and completion markup shown as text, never as elements
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;&lt;img src=x onerror=" in rows
    assert MARKER in rows and "<img" not in dom and "<script>document.title" not in dom

    shot = tmp_path / "report.png"
    done = chromium("--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={shot}", url=out_html.as_uri(),
                    tmp=tmp_path)
    assert console_lines(done.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


# --------------------------------------------------------------------------- content


def test_report_content_and_hidden_completions(runs):
    from harness.report import render_report
    from harness.rundir import load_runs
    from harness.store import read_samples

    loaded = load_runs([runs["deep"], runs["base"], runs["decoding"], runs["diag"]])
    html = render_report(loaded)
    data = report_data(html)
    assert data["show_completions"] is False and all(s[5] is None for s in data["samples"])
    some = next(r["completion"] for r in read_samples(runs["base"]) if len(r["completion"]) > 12)
    assert json.dumps(some)[1:-1][:12] not in html
    shown = report_data(render_report(loaded, show_completions=True))
    assert some in [s[5] for s in shown["samples"]]

    # leaderboard: both models, ASR with interval and n; any-of-N and over-refusal beside
    board = html.split('id="leaderboard-table"')[1].split("</table>")[0]
    assert re.search(r">0\.0</a> <span class=\"ci\">\(0–28\)</span> <span class=\"n\">n=10</span>", board)
    assert re.search(r">100\.0</a> <span class=\"ci\">\(72–100\)</span> <span class=\"n\">n=10</span>", board)
    assert "any-of-N %" in board and "over-refusal (overrefusal)" in board
    # plots only where their data exists
    sections = re.findall(r'<figure data-section="(\w+)">', html)
    assert {"prefill", "decoding", "diagnostics"} <= set(sections)
    assert "loss" not in sections and "finetune" not in sections
    assert "ASR by prefill depth" in html and "ASR by temperature" in html and "KL by response position" in html
    # per category, provenance
    assert "ASR by category" in html and "weapons" in html and "malware" in html
    manifest = json.loads((runs["base"] / "manifest.json").read_text())
    assert manifest["models"]["base"]["fingerprint_id"] in html
    assert manifest["judges"]["keyword"]["hash"] in html
    assert (manifest["git"].get("commit") or "unknown") in html and manifest["packages"]["transformers"] in html
    # diagnostics alone: no evaluation tables, still a page
    assert "No evaluation runs" in render_report(load_runs([runs["diag"]]))


def test_loss_and_round_plots_appear_with_their_data(runs, tmp_path):
    """Statistical/plot path only: a copy of ``base`` given GCG-style suffix ids (whose loss
    curves sit in the results root's artefact cache, as attacks/gcg.py stores them) and
    fine-tuning-round settings; no GCG or fine-tuning is run here."""
    from harness.report import render_report
    from harness.rundir import load_runs
    from harness.store import ArtifactCache, read_samples, write_samples

    root = tmp_path / "results"
    run = root / "gcg"
    shutil.copytree(runs["base"], run)
    records = read_samples(run)
    cache = ArtifactCache(root / ".cache" / "artifacts.sqlite")
    for i, r in enumerate(x for x in records if x["kind"] == "attack"):
        ids = [100 + i % 4, 200]
        cache.put(f"k{i % 4}", {"suffix_ids": ids, "losses": [3.0 - 0.1 * s - 0.01 * (i % 4) for s in range(6)],
                                "suffix": "x y"})
        r["attack_info"].update(suffix_ids=ids, suffix="x y", loss=2.5)
        r["setting_label"] = f"round={r['setting']['depth'] // 3}"
    cache.close()
    write_samples(run, records)
    summary = (run / "summary.csv").read_text().replace("depth=0", "round=0").replace("depth=3", "round=1")
    (run / "summary.csv").write_text(summary)
    html = render_report(load_runs([run]))
    sections = re.findall(r'<figure data-section="(\w+)">', html)
    assert "loss" in sections and "finetune" in sections
    assert "Mean over prompts (4 curves)" in html and "ASR per fine-tuning round" in html
    shutil.rmtree(root / ".cache")  # a run folder copied without its cache: no loss curve, no error
    assert "loss" not in re.findall(r'<figure data-section="(\w+)">', render_report(load_runs([run])))


def test_report_errors_exit_2(tmp_path):
    out = harness_cli("report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html"))
    assert out.returncode == 2 and "not a run folder" in out.stderr


# --------------------------------------------------------------------------- compare, export


def test_compare_console_csv_markdown(runs, tmp_path):
    out = harness_cli("compare", str(runs["deep"]), str(runs["base"]), "--csv", str(tmp_path / "c.csv"),
                      "--markdown", "-")
    assert out.returncode == 0, out.stderr
    import pandas as pd

    table = pd.read_csv(tmp_path / "c.csv")
    # different model names are different cells: listed as "only in", never silently matched
    assert set(table["section"]) == {"only:asr", "only:utility"}
    out = harness_cli("compare", str(runs["base"]), str(runs["base-payload"]), str(runs["base"]), "--markdown", "-")
    assert out.returncode == 0, out.stderr
    assert "| base | bench | prefill | depth=0 | sample | keyword | 100.0 | 100.0 | 100.0 | +0.0 | +0.0 |" in out.stdout
    console = harness_cli("compare", str(runs["base"]), str(runs["base-mt6"]))
    assert console.returncode == 0 and "differs: attack" in console.stdout


def test_export_jbb(runs, tmp_path):
    out = harness_cli("export", "--format", "jbb", str(runs["base"]), "--out", str(tmp_path / "base.json"))
    assert out.returncode == 0, out.stderr
    art = json.loads((tmp_path / "base.json").read_text())
    p = art["parameters"]
    assert (p["method"], p["model"], p["attack_type"]) == ("prefill", "base", "black_box")
    assert p["attack_success_rate"] == 1.0 and p["number_of_submitted_prompts"] == 10
    assert p["total_number_of_queries"] == 20 and p["harness"]["judge"]["name"] == "keyword"
    first = art["jailbreaks"][0]
    assert first["jailbroken"] is True and first["queries_to_jailbreak"] == 1 and first["goal"].startswith("Explain")
    out = harness_cli("export", "--format", "jbb", str(runs["deep"]))
    art = json.loads(out.stdout)
    assert art["parameters"]["total_number_of_jailbreaks"] == 0
    assert all(j["jailbroken"] is False and j["number_of_queries"] == 2 for j in art["jailbreaks"])
    bad = harness_cli("export", "--format", "jbb", str(runs["deep"]), "--setting", "depth=99")
    assert bad.returncode == 2 and "depth=99" in bad.stderr
