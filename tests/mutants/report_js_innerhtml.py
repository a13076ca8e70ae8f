"""Mutant: report.js writes model text with innerHTML (the static check reads this copy)."""
import atexit
import shutil
import tempfile
from pathlib import Path

import tests.test_report as T

_tmp = Path(tempfile.mkdtemp())
atexit.register(shutil.rmtree, _tmp, True)
_src = T.REPORT_JS.read_text(encoding="utf-8")
assert "el.textContent = String(value);" in _src
(_tmp / "report.js").write_text(_src.replace("el.textContent = String(value);", "el.innerHTML = String(value);"))
T.REPORT_JS = _tmp / "report.js"
