"""`harness report | compare | export` on real run folders, the report checked in headless Chromium.

Run folders come from tests/test_regress.py (``build_runs``: the real harness on two tiny models,
``deep`` answering "I cannot" to everything, ``base`` never refusing), plus a small decoding run
and a diagnostics folder written by harness.analysis.diagnostics's own CSV writer.

The escaping/CSP/no-external-load checks run twice: on the HTML with the standard library's
parser (every `make test`) and in real headless Chromium (skipped without a browser, except
under HARNESS_REQUIRE_BROWSER=1, which .ci/run sets: there a missing browser fails).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_regress import PAYLOAD, build_runs, harness_cli

MARKER = "COMPLETION-MARKER-7f3"
INJECT = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"  # put into a model name
REPORT_JS = ROOT / "harness" / "templates" / "report.js"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
# .ci/run sets HARNESS_REQUIRE_BROWSER=1: there a missing browser fails the browser tests instead of skipping them.
REQUIRE_BROWSER = os.environ.get("HARNESS_REQUIRE_BROWSER", "") not in ("", "0")


@pytest.fixture
def browser() -> str:
    """The Chromium binary; without one the browser tests skip, or fail under HARNESS_REQUIRE_BROWSER=1."""
    if CHROMIUM is None:
        message = "no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it when run as root)"
        if REQUIRE_BROWSER:
            pytest.fail(f"HARNESS_REQUIRE_BROWSER is set but {message}", pytrace=False)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, pool) -> dict[str, Path]:
    from harness.recipes import recipe_from_dict
    from harness.run.runner import run_recipe
    from harness.run.store import read_samples, write_samples
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
    """A ``kind: analyze`` folder with a KL-by-position table written by harness.analysis.diagnostics."""
    import torch

    from harness.analysis.diagnostics import PositionStats
    from harness.analysis.output import write_kl

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
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={tmp / 'profile'}",
                           "--enable-logging=stderr", "--v=0", *args, url],
                          capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    """The page's console messages (and uncaught errors, CSP violations) Chromium logged."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


# --------------------------------------------------------------------------- in the browser


def test_console_errors_would_be_seen(browser, tmp_path):
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


def test_report_loads_without_errors_and_model_text_stays_inert(browser, runs, tmp_path):
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


# --------------------------------------------------------------------------- without a browser
# What the browser tests above see, checked on the HTML itself with the standard library's
# parser (which, like a browser, ends a <script> at the first "</script"), so that these
# checks run in every `make test`, with or without Chromium.

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# attributes that make a browser fetch or navigate; in the report only in-page "#..." links and data: URIs
URL_ATTRS = {"src", "href", "xlink:href", "action", "formaction", "data", "poster", "srcset", "background", "ping",
             "codebase", "cite", "manifest", "icon"}
# elements that load or run something, or swap the page's base/target; none belongs in the report
ACTIVE_TAGS = {"iframe", "frame", "frameset", "object", "embed", "applet", "img", "image", "video", "audio", "source",
               "track", "base", "form", "foreignobject", "animate", "set", "animatetransform", "animatemotion",
               "portal", "math", "template", "noscript"}
# DOM sinks that parse a string as HTML or code; report.js must write text with textContent only
JS_SINKS = re.compile(r"\.(innerHTML|outerHTML|insertAdjacentHTML|createContextualFragment|srcdoc)\b|"
                      r"document\.(write|writeln)\s*\(|\beval\s*\(|\bnew\s+Function\s*\(|\bDOMParser\b|"
                      r"\bset(Timeout|Interval)\s*\(\s*[\"'`]|\.setAttribute\s*\(\s*[\"'](on\w+|href|src|style)[\"']")


class Page(HTMLParser):
    """Every element with its attributes and enclosing tags, the text of each <script>, <style>
    and other text node, in document order."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None], tuple[str, ...]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.styles: list[str] = []
        self.texts: list[tuple[tuple[str, ...], str]] = []
        self.stack: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), tuple(self.stack)))
        if tag == "script":
            self.scripts.append((dict(attrs), ""))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), tuple(self.stack)))

    def handle_endtag(self, tag):
        if tag in self.stack:
            while self.stack.pop() != tag:
                pass

    def handle_data(self, data):
        where = self.stack[-1] if self.stack else ""
        if where == "script":
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        elif where == "style":
            self.styles.append(data)
        else:
            self.texts.append((tuple(self.stack), data))


def csp_directives(page: Page) -> dict[str, list[str]]:
    metas = [a for t, a, _ in page.elements if t == "meta" and (a.get("http-equiv") or "").lower() ==
             "content-security-policy"]
    assert len(metas) == 1, f"one CSP meta tag, found {len(metas)}"
    out: dict[str, list[str]] = {}
    for part in (metas[0].get("content") or "").split(";"):
        if part.strip():
            name, *sources = part.split()
            out[name.lower()] = sources
    return out


def page_problems(html: str, own_script: str) -> list[str]:
    """Why ``html`` is not an inert, self-contained report page running only ``own_script``
    (report.js); [] when it is. Checked: the CSP, every element and attribute, the two scripts,
    the JSON payload and the CSS."""
    page = Page(html)
    problems = []
    csp = csp_directives(page)
    digest = "'sha256-" + base64.b64encode(hashlib.sha256(own_script.encode("utf-8")).digest()).decode() + "'"
    allowed = {"default-src": ["'none'"], "script-src": [digest], "img-src": ["data:"],
               "style-src": ["'unsafe-inline'"], "base-uri": ["'none'"], "form-action": ["'none'"]}
    if csp != allowed:
        problems.append(f"CSP is {csp}, expected {allowed}")
    order = [t if (a.get("http-equiv") or "").lower() != "content-security-policy" else "csp"
             for t, a, _ in page.elements if t in ("meta", "script", "style", "link")]
    if "csp" in order and order.index("csp") > min((order.index(t) for t in ("script", "style", "link") if t in order),
                                                   default=len(order)):
        problems.append("the CSP meta tag must come before every script, style and link")
    for tag, attrs, _ in page.elements:
        if tag in ACTIVE_TAGS:
            problems.append(f"<{tag}> element {attrs}")
        for name, value in attrs.items():
            value = (value or "").strip()
            if name.startswith("on"):
                problems.append(f"event handler attribute {name}={value!r} on <{tag}>")
            if name in URL_ATTRS and not (value.startswith("#") or value.startswith("data:")):
                problems.append(f"external or script URL {name}={value!r} on <{tag}>")
            if name in URL_ATTRS and value.startswith("data:") and not (tag == "link" and value == "data:,"):
                problems.append(f"data: URL {name}={value!r} on <{tag}>")
            if name == "style" and re.search(r"url\s*\(|expression\s*\(|@import", value, re.I):
                problems.append(f"style attribute loads something: {value!r}")
        if tag == "link" and (attrs.get("rel") != "icon" or attrs.get("href") != "data:,"):
            problems.append(f"<link> {attrs}")
        if tag == "meta" and (attrs.get("http-equiv") or "").lower() == "refresh":
            problems.append("meta refresh")
    for css in page.styles:
        if re.search(r"url\s*\((?!\s*[\"']?data:)|@import", css, re.I):
            problems.append("the stylesheet loads something")
    kinds = [(a.get("type"), a.get("id"), "src" in a) for a, _ in page.scripts]
    if kinds != [("application/json", "report-data", False), (None, None, False)]:
        problems.append(f"scripts {kinds}: expected the JSON payload, then report.js, nothing else")
    else:
        (_, payload), (_, code) = page.scripts
        if code != own_script:
            problems.append("the inline script is not report.js")
        if "<" in payload:  # escaped as \u003c: neither "</script" nor "<!--" can occur
            problems.append("raw '<' in the JSON payload")
        try:
            json.loads(payload)
        except ValueError as e:
            problems.append(f"the JSON payload does not parse: {e}")
    return problems


def js_sinks(script: str) -> list[str]:
    return [m.group(0) for m in JS_SINKS.finditer(script)]


@pytest.fixture(scope="module")
def markup_run(runs, tmp_path_factory) -> Path:
    """``base-payload`` with markup also in its model name (shown by the server-side tables)."""
    import pandas as pd

    from harness.run.store import read_samples, write_samples

    path = tmp_path_factory.mktemp("markup") / "markup-run"
    shutil.copytree(runs["base-payload"], path)
    records = read_samples(path)
    for r in records:
        r["model"] = "base" + INJECT
    write_samples(path, records)
    for name in ("summary.csv", "utility.csv"):
        if (path / name).is_file():
            table = pd.read_csv(path / name, keep_default_na=False)
            table["model"] = "base" + INJECT
            table.to_csv(path / name, index=False)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["models"] = {"base" + INJECT: m for m in manifest["models"].values()}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_report_html_is_inert_and_self_contained_without_a_browser(runs, markup_run, tmp_path):
    """Rendered in this process (the CLI is a thin wrapper, checked in the browser test), so that
    tests/mutants can break the renderer in memory."""
    from harness.results.report import write_report

    title = f"Gate {PAYLOAD} report"
    out_html = write_report([runs["deep"], runs["decoding"], runs["diag"], markup_run], tmp_path / "report.html",
                            show_completions=True, title=title)
    html = out_html.read_text(encoding="utf-8")
    script = REPORT_JS.read_text(encoding="utf-8")
    assert page_problems(html, script) == []
    page = Page(html)
    # markup in the title and the model name is text of the elements it belongs to, never elements
    assert [t for stack, t in page.texts if stack == ("html", "head", "title")] == [title]
    assert [t for stack, t in page.texts if stack[-1:] == ("h1",)] == [title]
    where = {stack[-1] for stack, t in page.texts if "base" + INJECT in t}
    assert {"b", "td", "th"} <= where, where  # leaderboard, cells table, category table heads
    assert {t for t, _, _ in page.elements} >= {"table", "svg", "figure"}  # the page was really parsed
    # the completions with "</script><!--" come back whole from the JSON payload, as data
    data = json.loads(page.scripts[0][1])
    assert data == report_data(html)
    completions = [s[5] for s in data["samples"] if s[5] and MARKER in s[5]]
    assert completions and all(c == f"{PAYLOAD} {MARKER} </td></tr></table></script><!--" for c in completions)
    prompts = [e[0] for e in data["examples"] if PAYLOAD in e[0]]
    assert len(prompts) == 2
    # outside the two scripts' own tags, no "<" of model text survives unescaped
    assert html.count("</script") == 2 and "<!--" not in html and "<img" not in html.lower()


def test_report_js_writes_model_text_as_text_only():
    """report.js builds every node with createElement and fills it with textContent: no sink
    that parses a string as HTML or code, so nothing in the JSON payload can become markup."""
    script = REPORT_JS.read_text(encoding="utf-8")
    assert js_sinks(script) == []
    assert "textContent = String(value)" in script and script.count("textContent") >= 3


@pytest.mark.parametrize("mutant", [
    ("el.textContent = String(value);", "el.innerHTML = String(value);"),
    ("body.appendChild(tr);", "body.insertAdjacentHTML('beforeend', tr.outerHTML);"),
    ("el.textContent = String(value);", "document.write(String(value));"),
    ("el.textContent = String(value);", "el.setAttribute('onclick', String(value));"),
])
def test_the_sink_check_sees_html_writes(mutant):
    """Negative controls: report.js with one textContent write swapped for an HTML sink fails the check."""
    before, after = mutant
    script = REPORT_JS.read_text(encoding="utf-8")
    assert before in script
    assert js_sinks(script.replace(before, after, 1)) != []


@pytest.mark.parametrize("mutant", [
    "unescaped-json", "unsafe-inline", "external-script", "event-handler", "markup-in-title", "script-src-self",
    "csp-after-script", "external-style",
])
def test_the_page_check_sees_each_way_out(runs, mutant):
    """Negative controls: the page check above flags a report with the JSON payload unescaped,
    'unsafe-inline' scripts, an external script, an injected event handler, an unescaped title,
    a CSP that allows same-origin scripts or comes after a script, or a stylesheet loading a URL."""
    from harness.results.report import render_report
    from harness.results.rundir import load_runs

    script = REPORT_JS.read_text(encoding="utf-8")
    html = render_report(load_runs([runs["base-payload"]]), show_completions=True, title="T")
    assert page_problems(html, script) == []
    head_end = html.index("</head>")
    if mutant == "unescaped-json":
        bad = html.replace("\\u003c", "<").replace("\\u003e", ">")
    elif mutant == "unsafe-inline":
        bad = html.replace("script-src '", "script-src 'unsafe-inline' '", 1)
    elif mutant == "script-src-self":
        bad = html.replace("script-src '", "script-src 'self' '", 1)
    elif mutant == "external-script":
        bad = html[:head_end] + '<script src="https://cdn.example/x.js"></script>' + html[head_end:]
    elif mutant == "event-handler":
        bad = html.replace("<main>", '<main><div onmouseover="alert(1)"></div>', 1)
    elif mutant == "markup-in-title":
        bad = html.replace("<title>T</title>", f"<title>T</title>{PAYLOAD}", 1)
    elif mutant == "csp-after-script":
        meta = re.search(r"<meta http-equiv=\"Content-Security-Policy\"[^>]*>", html).group(0)
        bad = html.replace(meta, "", 1).replace("</body>", meta + "</body>", 1)
    else:
        bad = html.replace("</style>", "body { background: url(https://example.org/x.png) }</style>", 1)
    assert bad != html
    assert page_problems(bad, script) != []


# --------------------------------------------------------------------------- content


def test_report_content_and_hidden_completions(runs):
    from harness.results.report import render_report
    from harness.results.rundir import load_runs
    from harness.run.store import read_samples

    loaded = load_runs([runs["deep"], runs["base"], runs["decoding"], runs["diag"]])
    html = render_report(loaded)
    data = report_data(html)
    assert data["show_completions"] is False and all(s[5] is None for s in data["samples"])
    some = next(r["completion"] for r in read_samples(runs["base"]) if len(r["completion"]) > 12)
    assert json.dumps(some)[1:-1][:12] not in html
    shown = report_data(render_report(loaded, show_completions=True))
    assert some in [s[5] for s in shown["samples"]]

    # leaderboard: one row per model (deep, base), ASR with interval and n; any-of-N and over-refusal beside
    board = html.split('id="leaderboard-table"')[1].split("</table>")[0]
    assert board.count("<tr data-model=") == 2
    assert re.search(r">0\.0</a></span><span class=\"sub\">0–28</span><span class=\"sub\">n=10</span>", board)
    assert re.search(r">100\.0</a></span><span class=\"sub\">72–100</span><span class=\"sub\">n=10</span>", board)
    assert "bench any-of-N" in board and "over-refusal (overrefusal)" in board
    # depth summary (the runs have depths 0 and 3: k = 3 only): deep 0 of 10 prompts, base 10 of 10
    assert "depth ASR" in board and "k ∈ {3}" in html
    assert html.index('id="depth-plot"') < html.index('id="plots"') < html.index('id="details"')
    assert re.search(r'<details id="cells">\s*<summary>All cells', html)  # detail tables collapsed
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
    from harness.results.report import render_report
    from harness.results.rundir import load_runs
    from harness.run.store import ArtifactCache, read_samples, write_samples

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


def test_report_against_a_baseline_shows_the_regress_verdicts(runs, tmp_path):
    """base against the baseline deep: per prompt, ASR 0 -> 1 on all 10 prompts at depth 0 and
    depth 3 (McNemar b = 10, c = 0: one-sided p = 1/1024), over-refusal 1 -> 0 on 6 prompts (b = 0,
    c = 6: p = 1). Holm over the 3 cells: 3/1024, 3/1024, 1 -> both ASR cells are regressions
    (+100 points); over-refusal fell, but 6 prompts cannot show a 2-point margin: inconclusive."""
    out_html = tmp_path / "cmp.html"
    out = harness_cli("report", str(runs["base"]), "--baseline", str(runs["deep"]), "--out", str(out_html))
    assert out.returncode == 0, out.stderr
    html = out_html.read_text(encoding="utf-8")
    board = html.split('id="leaderboard-table"')[1].split("</table>")[0]
    assert '<span class="cmp c-regression">+100.0 regression</span>' in board
    assert '<span class="cmp c-inconclusive">-100.0 inconclusive</span>' in board
    table = html.split('id="comparison-table"')[1].split("</table>")[0]
    verdicts = re.findall(r'<span class="cmp c-([a-z-]+)">', table)
    assert sorted(verdicts) == ["inconclusive", "regression", "regression"]
    assert "Holm 0.00293" in table  # 3/1024
    assert "n too small" in table
    # a run with another sampling configuration (base-mt6: 6 tokens): not comparable, not a verdict
    from harness.results.report import render_report
    from harness.results.rundir import load_run, load_runs

    other = render_report(load_runs([runs["base-mt6"]]), baseline=load_run(runs["base"]))
    table = other.split('id="comparison-table"')[1].split("</table>")[0]
    assert "not comparable" in table and "attack" in table


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
