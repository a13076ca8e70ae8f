"""Dependency-free SVG charts: line charts (several series, optional error bands) and grouped
bar charts, as standalone ``<svg>`` strings that can be written to a file or inlined in HTML.

Every piece of text (titles, labels, series and category names) is escaped, and characters
that XML forbids are replaced, so no input can inject markup. Output is deterministic: the
same inputs give the same string, and ids (the plot-area clip path) are derived from the
content, so several charts can be inlined in one page.

Structure, for tools and tests: data lines are ``<polyline class="line" data-series=…>``
(one per series with data), error bands ``<polygon class="band">``, markers
``<circle class="marker">``, bars ``<rect class="bar" data-series=… data-category=…>``,
error bars ``<path class="errorbar">``; the legend is ``<g class="legend">``. Non-finite
values (NaN, ±inf) are left out: a line skips them, a bar is not drawn.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["PALETTE", "bar_chart", "escape", "line_chart", "nice_ticks"]

# Okabe–Ito colours (colour-blind safe), yellow left out (unreadable on white).
PALETTE: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
                            "#999999")
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
CHAR_W = 6.6  # approximate width of one character at font-size 12, for layout
MARKERS_UP_TO = 50  # points per series up to which every point also gets a marker
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

Point = tuple[float, float]


# --------------------------------------------------------------------------- text and numbers


def escape(text: object) -> str:
    """``text`` as XML character data or attribute value: ``& < > " '`` escaped, characters
    XML 1.0 forbids (control characters, lone surrogates) replaced by U+FFFD."""
    return html.escape(_INVALID_XML.sub("\ufffd", str(text)), quote=True)


def _num(v: float) -> str:
    """A coordinate: two decimals, no negative zero."""
    s = f"{v:.2f}"
    return "0.00" if s == "-0.00" else s


def _finite(*vs: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in vs)


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """About ``target`` round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 × 10^k);
    the first tick is ≤ lo and the last ≥ hi."""
    if not _finite(lo, hi):
        raise ValueError(f"nice_ticks: non-finite range ({lo}, {hi})")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first = math.floor(lo / step + 1e-9) * step
    n = int(math.ceil((hi - first) / step - 1e-9))
    return [float(round(first + i * step, 12)) for i in range(n + 1)]


def _tick_label(v: float, step: float) -> str:
    """``v`` with as many decimals as the tick step needs (0.25 → 2), or 3 significant
    digits for very large or very small steps."""
    if abs(v) >= 1e6 or step < 1e-4:
        return "0" if v == 0 else f"{v:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if step * 10 ** decimals % 1 > 1e-6:  # steps like 2.5
        decimals += 1
    s = f"{v:.{decimals}f}"
    return s[1:] if s.startswith("-") and not s.strip("-0.") else s  # no "-0.00"


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Axis:
    """A linear map from the data interval [lo, hi] to pixels [p0, p1] (p1 < p0 for y)."""

    lo: float
    hi: float
    p0: float
    p1: float

    def __call__(self, v: float) -> float:
        return self.p0 + (v - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


@dataclass(frozen=True)
class _Frame:
    """Pixel box of the plot area inside the whole picture."""

    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float

    @property
    def clip_box(self) -> str:
        return (f'x="{_num(self.left)}" y="{_num(self.top)}" width="{_num(self.right - self.left)}" '
                f'height="{_num(self.bottom - self.top)}"')


def _frame(width: int, height: int, title: str, x_label: str, y_label: str, legend: Sequence[str],
           extra_bottom: float = 0.0) -> _Frame:
    legend_w = (30 + CHAR_W * min(max(map(len, legend)), 40)) if legend else 0.0
    return _Frame(width, height,
                  left=58.0 + (18.0 if y_label else 0.0),
                  right=width - 16.0 - legend_w,
                  top=16.0 + (24.0 if title else 0.0),
                  bottom=height - 30.0 - (20.0 if x_label else 0.0) - extra_bottom)


def _domain(values: Iterable[float], given: tuple[float, float] | None, name: str,
            include_zero: bool = False) -> tuple[float, float, list[float]]:
    """(lo, hi, ticks): the given range exactly, else the data's range widened to round ticks."""
    if given is not None:
        lo, hi = given
        if not _finite(lo, hi) or not lo < hi:
            raise ValueError(f"{name}: needs two finite numbers lo < hi, got {given!r}")
        return lo, hi, [t for t in nice_ticks(lo, hi) if lo - 1e-9 <= t <= hi + 1e-9]
    vals = [v for v in values if _finite(v)] + ([0.0] if include_zero else [])
    if not vals:
        vals = [0.0, 1.0]
    ticks = nice_ticks(min(vals), max(vals))
    return ticks[0], ticks[-1], ticks


def _chart_id(kind: str, *content: object) -> str:
    return f"{kind}-" + hashlib.sha256(repr(content).encode()).hexdigest()[:10]


def _text(x: float, y: float, s: str, cls: str, anchor: str = "middle", rotate: float | None = None,
          size: int | None = None, weight: str | None = None) -> str:
    attrs = f'x="{_num(x)}" y="{_num(y)}" class="{cls}" text-anchor="{anchor}"'
    if rotate is not None:
        attrs += f' transform="rotate({rotate:g} {_num(x)} {_num(y)})"'
    if size is not None:
        attrs += f' font-size="{size}"'
    if weight is not None:
        attrs += f' font-weight="{weight}"'
    return f"<text {attrs}>{escape(s)}</text>"


def _open_svg(f: _Frame, title: str, clip_id: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{f.width}" height="{f.height}" '
        f'viewBox="0 0 {f.width} {f.height}" font-family="{escape(FONT)}" font-size="12" role="img" '
        f'aria-label="{escape(title or "chart")}">',
        f"<title>{escape(title)}</title>" if title else "",
        f'<defs><clipPath id="{clip_id}"><rect {f.clip_box}/></clipPath></defs>',
        f'<rect class="background" x="0" y="0" width="{f.width}" height="{f.height}" fill="#ffffff"/>',
    ]


def _labels(f: _Frame, title: str, x_label: str, y_label: str) -> list[str]:
    out = []
    if title:
        out.append(_text(f.width / 2, 22, title, "title", size=14, weight="600"))
    if x_label:
        out.append(_text((f.left + f.right) / 2, f.height - 10, x_label, "x-label"))
    if y_label:
        out.append(_text(16, (f.top + f.bottom) / 2, y_label, "y-label", rotate=-90))
    return out


def _y_axis(f: _Frame, y: _Axis, ticks: list[float]) -> list[str]:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    out = ['<g class="grid" stroke="#e5e5e5" stroke-width="1">']
    out += [f'<line x1="{_num(f.left)}" y1="{_num(y(t))}" x2="{_num(f.right)}" y2="{_num(y(t))}"/>' for t in ticks]
    out.append("</g>")
    out.append('<g class="y-axis">')
    out.append(f'<line x1="{_num(f.left)}" y1="{_num(f.top)}" x2="{_num(f.left)}" y2="{_num(f.bottom)}" '
               'stroke="#333333"/>')
    for t in ticks:
        out.append(f'<line x1="{_num(f.left - 4)}" y1="{_num(y(t))}" x2="{_num(f.left)}" y2="{_num(y(t))}" '
                   'stroke="#333333"/>')
        out.append(_text(f.left - 7, y(t) + 4, _tick_label(t, step), "tick", anchor="end"))
    out.append("</g>")
    return out


def _x_axis_numeric(f: _Frame, x: _Axis, ticks: list[float]) -> list[str]:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    out = ['<g class="x-axis">',
           f'<line x1="{_num(f.left)}" y1="{_num(f.bottom)}" x2="{_num(f.right)}" y2="{_num(f.bottom)}" '
           'stroke="#333333"/>']
    for t in ticks:
        out.append(f'<line x1="{_num(x(t))}" y1="{_num(f.bottom)}" x2="{_num(x(t))}" y2="{_num(f.bottom + 4)}" '
                   'stroke="#333333"/>')
        out.append(_text(x(t), f.bottom + 17, _tick_label(t, step), "tick"))
    out.append("</g>")
    return out


def _legend(f: _Frame, names: Sequence[str], swatch: str) -> list[str]:
    """One entry per name at the right of the plot; ``swatch`` is "line" or "box"."""
    out = ['<g class="legend">']
    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        x0, y0 = f.right + 14, f.top + 8 + 18 * i
        if swatch == "line":
            out.append(f'<line x1="{_num(x0)}" y1="{_num(y0)}" x2="{_num(x0 + 18)}" y2="{_num(y0)}" '
                       f'stroke="{colour}" stroke-width="2.5"/>')
        else:
            out.append(f'<rect x="{_num(x0 + 4)}" y="{_num(y0 - 5)}" width="10" height="10" fill="{colour}"/>')
        shown = name if len(name) <= 40 else name[:39] + "…"
        out.append(_text(x0 + 24, y0 + 4, shown, "legend-label", anchor="start"))
    out.append("</g>")
    return out


# --------------------------------------------------------------------------- charts


def _per_series(chart: str, series: Mapping[str, Any], extra: Mapping[str, Any] | None, what: str) -> dict:
    """``extra`` (bands, error bars) keyed by series: every key must name a series."""
    if not series:
        raise ValueError(f"{chart}: no series")
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(series))
    if unknown:
        raise ValueError(f"{chart}: {what} for unknown series {unknown}; series are {list(series)}")
    return extra


def line_chart(series: Mapping[str, Sequence[Point]], title: str = "", x_label: str = "", y_label: str = "",
               bands: Mapping[str, Sequence[tuple[float, float, float]]] | None = None,
               y_range: tuple[float, float] | None = None, x_range: tuple[float, float] | None = None,
               width: int = 640, height: int = 400) -> str:
    """A line chart: one polyline per series of (x, y) points, in the order given.

    ``bands`` maps a series name to (x, lo, hi) triples, drawn as a translucent band in the
    series' colour (e.g. a 95% interval). ``y_range``/``x_range`` fix an axis (data outside
    is clipped to the plot area); otherwise each axis spans the data, widened to round ticks.
    Each series with up to 50 finite points also gets a marker per point, so a one-point
    series is visible."""
    bands = _per_series("line_chart", series, bands, "bands")
    names = [str(n) for n in series]
    clean = {n: [(float(x), float(y)) for x, y in pts if _finite(x, y)] for n, pts in zip(names, series.values())}
    clean_bands = {str(n): [(float(x), float(a), float(b)) for x, a, b in rows if _finite(x, a, b)]
                   for n, rows in bands.items()}

    xs = [x for pts in clean.values() for x, _ in pts] + [x for rows in clean_bands.values() for x, _, _ in rows]
    ys = ([y for pts in clean.values() for _, y in pts]
          + [v for rows in clean_bands.values() for _, a, b in rows for v in (a, b)])
    legend = [n if clean[n] else f"{n} (no data)" for n in names]
    f = _frame(width, height, title, x_label, y_label, legend)
    x_lo, x_hi, x_ticks = _domain(xs, x_range, "line_chart x_range")
    y_lo, y_hi, y_ticks = _domain(ys, y_range, "line_chart y_range")
    x, y = _Axis(x_lo, x_hi, f.left, f.right), _Axis(y_lo, y_hi, f.bottom, f.top)
    clip = _chart_id("clip", "line", title, x_label, y_label, clean, clean_bands, x_range, y_range, width, height)

    out = _open_svg(f, title, clip) + _y_axis(f, y, y_ticks) + _x_axis_numeric(f, x, x_ticks)
    out.append(f'<g class="plot-area" clip-path="url(#{clip})">')
    for i, name in enumerate(names):
        rows = sorted(clean_bands.get(name, []))
        if rows:
            ring = [(x(a), y(hi)) for a, _, hi in rows] + [(x(a), y(lo)) for a, lo, _ in reversed(rows)]
            pts = " ".join(f"{_num(px)},{_num(py)}" for px, py in ring)
            out.append(f'<polygon class="band" data-series="{escape(name)}" points="{pts}" '
                       f'fill="{PALETTE[i % len(PALETTE)]}" fill-opacity="0.18" stroke="none"/>')
    for i, name in enumerate(names):
        pts_data = clean[name]
        if not pts_data:
            continue
        colour = PALETTE[i % len(PALETTE)]
        pts = " ".join(f"{_num(x(a))},{_num(y(b))}" for a, b in pts_data)
        out.append(f'<polyline class="line" data-series="{escape(name)}" points="{pts}" fill="none" '
                   f'stroke="{colour}" stroke-width="2" stroke-linejoin="round"><title>{escape(name)}</title>'
                   "</polyline>")
        if len(pts_data) <= MARKERS_UP_TO:
            out += [f'<circle class="marker" data-series="{escape(name)}" cx="{_num(x(a))}" cy="{_num(y(b))}" '
                    f'r="2.5" fill="{colour}"/>' for a, b in pts_data]
    out.append("</g>")
    out += _legend(f, legend, "line") + _labels(f, title, x_label, y_label) + ["</svg>"]
    return "\n".join(s for s in out if s)


def bar_chart(values: Mapping[str, Mapping[str, float]], title: str = "", x_label: str = "", y_label: str = "",
              errors: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
              y_range: tuple[float, float] | None = None, width: int = 640, height: int = 400) -> str:
    """A grouped bar chart: ``values[series][category]`` is one bar; categories run along the x
    axis in first-seen order, with one bar per series in each group (a legend when there are
    several series). Bars start at 0 (negative values go down). ``errors[series][category]``
    is an absolute (lo, hi) interval drawn as an error bar. Missing or non-finite values draw
    no bar."""
    errors = _per_series("bar_chart", values, errors, "errors")
    names = [str(n) for n in values]
    cats: list[str] = []
    for row in values.values():
        cats += [str(c) for c in row if str(c) not in cats]
    if not cats:
        raise ValueError("bar_chart: no categories")
    vals = {n: {str(c): float(v) for c, v in row.items() if _finite(v)} for n, row in zip(names, values.values())}
    errs = {str(n): {str(c): (float(a), float(b)) for c, (a, b) in row.items() if _finite(a, b)}
            for n, row in errors.items()}

    legend = names if len(names) > 1 else []
    f0 = _frame(width, height, title, x_label, y_label, legend)
    group_w = (f0.right - f0.left) / len(cats)
    rotate = max(map(len, cats)) * CHAR_W > group_w * 0.95
    extra = min(max(map(len, cats)), 30) * CHAR_W * 0.6 if rotate else 0.0
    f = _frame(width, height, title, x_label, y_label, legend, extra_bottom=extra)
    ys = [v for row in vals.values() for v in row.values()] + [v for row in errs.values() for p in row.values()
                                                               for v in p]
    y_lo, y_hi, y_ticks = _domain(ys, y_range, "bar_chart y_range", include_zero=True)
    y = _Axis(y_lo, y_hi, f.bottom, f.top)
    base = y(min(max(0.0, y_lo), y_hi))
    clip = _chart_id("clip", "bar", title, x_label, y_label, vals, errs, y_range, width, height)

    out = _open_svg(f, title, clip) + _y_axis(f, y, y_ticks)
    out.append('<g class="x-axis">')
    out.append(f'<line x1="{_num(f.left)}" y1="{_num(f.bottom)}" x2="{_num(f.right)}" y2="{_num(f.bottom)}" '
               'stroke="#333333"/>')
    for j, cat in enumerate(cats):
        cx = f.left + group_w * (j + 0.5)
        shown = cat if len(cat) <= 30 else cat[:29] + "…"
        out.append(_text(cx, f.bottom + 16, shown, "tick", anchor="end" if rotate else "middle",
                         rotate=-35 if rotate else None))
    out.append("</g>")
    out.append(f'<g class="plot-area" clip-path="url(#{clip})">')
    bar_w = group_w * 0.8 / len(names)
    for j, cat in enumerate(cats):
        for i, name in enumerate(names):
            x0 = f.left + group_w * j + group_w * 0.1 + bar_w * i
            if cat in vals[name]:
                v = vals[name][cat]
                top, bottom = sorted((y(v), base))
                out.append(f'<rect class="bar" data-series="{escape(name)}" data-category="{escape(cat)}" '
                           f'x="{_num(x0)}" y="{_num(top)}" width="{_num(bar_w)}" height="{_num(bottom - top)}" '
                           f'fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(f"{name} · {cat}: {v:.4g}")}'
                           "</title></rect>")
            if cat in errs.get(name, {}):
                lo, hi = errs[name][cat]
                cx, cap = x0 + bar_w / 2, min(bar_w * 0.25, 6.0)
                d = (f"M{_num(cx)},{_num(y(lo))}V{_num(y(hi))}M{_num(cx - cap)},{_num(y(lo))}H{_num(cx + cap)}"
                     f"M{_num(cx - cap)},{_num(y(hi))}H{_num(cx + cap)}")
                out.append(f'<path class="errorbar" data-series="{escape(name)}" data-category="{escape(cat)}" '
                           f'd="{d}" stroke="#222222" stroke-width="1.2" fill="none"/>')
    out.append("</g>")
    out += _legend(f, legend, "box") + _labels(f, title, x_label, y_label) + ["</svg>"]
    return "\n".join(s for s in out if s)
