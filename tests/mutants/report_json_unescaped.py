"""Mutant: the sample browser's JSON is embedded without escaping '<' (a completion with
"</script>" ends the data block)."""
import json

import harness.results.report as R
from markupsafe import Markup

_environment = R._environment


def unescaped_environment():
    env = _environment()
    env.filters["tojson"] = lambda obj: Markup(json.dumps(obj, ensure_ascii=True, default=str, separators=(",", ":")))
    return env


R._environment = unescaped_environment
