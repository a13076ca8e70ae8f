"""Mutant: the sample browser's JSON is embedded without escaping '<' (a completion with
"</script>" ends the data block)."""
import json

import harness.report as R
from markupsafe import Markup

R.script_json = lambda obj: Markup(json.dumps(obj, ensure_ascii=True, default=str, separators=(",", ":")))
