"""Mutant: the CSP allows inline scripts ('unsafe-inline' next to the hash)."""
from jinja2 import PackageLoader

_get = PackageLoader.get_source


def get_source(self, environment, template):
    src, name, up = _get(self, environment, template)
    if template == "report.html.j2":
        assert "script-src '{{ csp_script }}'" in src
        src = src.replace("script-src '{{ csp_script }}'", "script-src 'unsafe-inline' '{{ csp_script }}'")
    return src, name, up


PackageLoader.get_source = get_source
