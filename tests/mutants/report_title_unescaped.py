"""Mutant: the report's <title> is rendered with |safe (markup in a title becomes elements)."""
import harness.results.report as R
from jinja2 import PackageLoader

_get = PackageLoader.get_source


def get_source(self, environment, template):
    src, name, up = _get(self, environment, template)
    if template == "report.html.j2":
        assert "<title>{{ title }}</title>" in src
        src = src.replace("<title>{{ title }}</title>", "<title>{{ title|safe }}</title>")
    return src, name, up


PackageLoader.get_source = get_source
