"""`harness report / compare / export` on real run folders (tests/test_regress.py builds them),
opened in real headless Chromium: no console errors, a screenshot, and model text that carries
`<script>` / `onerror` markup stays inert."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_regress import PAYLOAD, build_runs, harness_cli

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (.ci/run installs Debian's)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, pool):
    return build_runs(tmp_path_factory.mktemp("gate"), tiny_model, pool)


def chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    """Chromium's CONSOLE log lines that report errors (uncaught exceptions, console.error)."""
    lines = [ln for ln in stderr.splitlines() if "CONSOLE" in ln]
    return [ln for ln in lines if re.search(r"Uncaught|Error|error", ln)]


@needs_chromium
def test_console_error_detection_works(tmp_path):
    """The check below must be able to fail: a page with a console error is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('control-error'); undefinedFn();</script></body></html>")
    out = chromium(page.as_uri(), tmp_path, "--dump-dom")
    errs = console_errors(out.stderr)
    assert any("control-error" in e for e in errs) and any("undefinedFn" in e for e in errs), out.stderr[-2000:]


@needs_chromium
def test_report_loads_offline_without_errors_and_markup_stays_inert(runs, tmp_path):
    out_html = tmp_path / "report.html"
    res = harness_cli("report", str(runs["deep"]), str(runs["base"]), "--out", str(out_html), "--show-completions")
    assert res.returncode == 0, res.stderr
    html = out_html.read_text(encoding="utf-8")
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html, "no CDN"
    assert PAYLOAD not in html and "<script>document.title" not in html, "model text is escaped in the file"
    # open every cell's samples in the sample browser, so the payload is rendered into the DOM
    url = out_html.as_uri() + "#samples=" + ",".join(str(i) for i in range(400))
    dom = chromium(url, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not console_errors(dom.stderr), console_errors(dom.stderr)
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert "<title>PWNED</title>" not in dom.stdout and "data-pwned" not in body, "injected markup ran"
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in dom.stdout, "the payload is shown as text"
    assert "Leaderboard" in dom.stdout and "<svg" in dom.stdout
    shot = tmp_path / "report.png"
    chromium(out_html.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,1600")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_completions_are_hidden_by_default(runs, tmp_path):
    out_html = tmp_path / "r.html"
    assert harness_cli("report", str(runs["base"]), "--out", str(out_html)).returncode == 0
    html = out_html.read_text(encoding="utf-8")
    base = [json.loads(x) for x in (runs["base"] / "samples.jsonl").read_text().splitlines()]
    completions = {r["completion"] for r in base if r.get("completion") and len(r["completion"]) > 20}
    assert completions and not any(json.dumps(c)[1:-1] in html for c in completions)


def test_compare_and_export(runs, tmp_path):
    res = harness_cli("compare", str(runs["deep"]), str(runs["base"]), "--csv", "-")
    assert res.returncode == 0, res.stderr
    assert "depth=3" in res.stdout
    out = tmp_path / "jbb.json"
    res = harness_cli("export", "--format", "jbb", str(runs["base"]), "--out", str(out))
    assert res.returncode == 0, res.stderr
    art = json.loads(out.read_text())
    assert "parameters" in art and len(art["jailbreaks"]) > 0
