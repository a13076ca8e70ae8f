"""SVG charts: well-formed XML, one element per series/point/bar, escaped text, fixed ranges."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from harness.results.plots import bar_chart, escape, line_chart, nice_ticks

NS = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == NS + "svg"
    return root


def _by_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(NS + tag) if e.get("class") == cls]


def _points(e: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in e.get("points").split()]


def _texts(root: ET.Element) -> list[str]:
    return ["".join(e.itertext()) for e in root.iter(NS + "text")]


def test_line_chart_has_one_polyline_per_series_and_one_vertex_per_finite_point():
    series = {"a": [(1, 0.5), (2, 0.25), (3, 0.125)],
              "b": [(1, 1.0), (2, math.nan), (3, 2.0), (4, math.inf)],
              "c": [(0, 3.0)]}
    root = _parse(line_chart(series, title="t", x_label="x", y_label="y"))
    lines = _by_class(root, "polyline", "line")
    assert [e.get("data-series") for e in lines] == ["a", "b", "c"]
    assert [len(_points(e)) for e in lines] == [3, 2, 1]
    assert len(_by_class(root, "circle", "marker")) == 6
    assert len({e.get("stroke") for e in lines}) == 3
    legend = [e for e in root.iter(NS + "g") if e.get("class") == "legend"]
    assert ["".join(t.itertext()) for t in legend[0].iter(NS + "text")] == ["a", "b", "c"]


def test_line_chart_maps_larger_values_up_and_right():
    root = _parse(line_chart({"s": [(1, 1.0), (2, 3.0), (3, 2.0)]}))
    (xa, ya), (xb, yb), (xc, yc) = _points(_by_class(root, "polyline", "line")[0])
    assert xa < xb < xc
    assert yb < yc < ya  # SVG y grows downwards


def test_line_chart_fixed_y_range_pins_the_plot_area_edges():
    root = _parse(line_chart({"s": [(0, 0.0), (10, 1.0)]}, y_range=(0.0, 1.0), x_range=(0.0, 10.0)))
    (x0, y0), (x1, y1) = _points(_by_class(root, "polyline", "line")[0])
    clip = root.find(f"{NS}defs/{NS}clipPath/{NS}rect")
    left, top = float(clip.get("x")), float(clip.get("y"))
    right, bottom = left + float(clip.get("width")), top + float(clip.get("height"))
    assert (x0, y0) == pytest.approx((left, bottom), abs=0.01)
    assert (x1, y1) == pytest.approx((right, top), abs=0.01)
    ticks = [t for t in _texts(root) if t not in ("",)]
    assert "0.0" in ticks and "1.0" in ticks and "1.2" not in ticks


def test_line_chart_bands_are_polygons_around_their_series():
    series = {"m": [(1, 2.0), (2, 1.0), (3, 0.5)], "n": [(1, 0.0), (2, 0.0)]}
    bands = {"m": [(1, 1.5, 2.5), (2, 0.5, 1.5), (3, 0.0, 1.0)]}
    root = _parse(line_chart(series, bands=bands))
    polys = _by_class(root, "polygon", "band")
    assert [p.get("data-series") for p in polys] == ["m"]
    ring = _points(polys[0])
    assert len(ring) == 6  # upper edge then lower edge back
    line = _points(_by_class(root, "polyline", "line")[0])
    for (x, y), (ux, uy), (lx, ly) in zip(line, ring[:3], reversed(ring[3:])):
        assert x == ux == lx and uy < y < ly
    with pytest.raises(ValueError, match="unknown series"):
        line_chart(series, bands={"zzz": [(1, 0, 1)]})


def test_text_is_escaped_and_cannot_inject_markup():
    evil = '</text><script>x</script>&amp;\x00\'"'  # short enough to be shown whole in the legend
    svg = line_chart({evil: [(1, 1.0)]}, title=evil, x_label=evil, y_label=evil,
                     bands={evil: [(1, 0.5, 1.5)]})
    root = _parse(svg)
    assert not list(root.iter(NS + "script")) and not list(root.iter("script"))
    clean = evil.replace("\x00", "\ufffd")
    assert _texts(root).count(clean) >= 4  # title, both axis labels, legend
    assert _by_class(root, "polyline", "line")[0].get("data-series") == clean
    assert root.find(NS + "title").text == clean
    bars = bar_chart({evil: {evil: 1.0}}, title=evil)
    root = _parse(bars)
    rect = _by_class(root, "rect", "bar")[0]
    assert rect.get("data-series") == clean and rect.get("data-category") == clean
    assert escape("<a href='x'>&") == "&lt;a href=&#x27;x&#x27;&gt;&amp;"


def test_bar_chart_draws_one_rect_per_finite_value_grouped_by_category():
    values = {"base": {"k=0": 0.9, "k=5": 0.95, "k=10": 0.97},
              "deep": {"k=0": 0.0, "k=5": 0.05, "k=10": math.nan}}
    errors = {"deep": {"k=5": (0.02, 0.13)}}
    root = _parse(bar_chart(values, title="ASR", y_label="ASR", errors=errors, y_range=(0, 1)))
    rects = _by_class(root, "rect", "bar")
    assert [(r.get("data-series"), r.get("data-category")) for r in rects] == [
        ("base", "k=0"), ("deep", "k=0"), ("base", "k=5"), ("deep", "k=5"), ("base", "k=10")]
    assert len(_by_class(root, "path", "errorbar")) == 1
    heights = {(r.get("data-series"), r.get("data-category")): float(r.get("height")) for r in rects}
    assert heights[("base", "k=5")] == pytest.approx(heights[("base", "k=0")] * 0.95 / 0.9, rel=1e-3)
    assert heights[("deep", "k=0")] == 0
    assert all(c in _texts(root) for c in ("k=0", "k=5", "k=10", "base", "deep"))


def test_bar_chart_negative_values_hang_below_the_zero_line():
    root = _parse(bar_chart({"s": {"up": 1.0, "down": -1.0}}))
    up, down = _by_class(root, "rect", "bar")
    assert float(up.get("y")) + float(up.get("height")) == pytest.approx(float(down.get("y")), abs=0.01)
    assert float(up.get("height")) == pytest.approx(float(down.get("height")), abs=0.01)


def test_single_series_bar_chart_has_no_legend_and_errors_are_checked():
    root = _parse(bar_chart({"only": {"a": 1.0, "b": 2.0}}))
    assert not [e for e in root.iter(NS + "g") if e.get("class") == "legend"][0].findall(NS + "text")
    with pytest.raises(ValueError, match="no series"):
        bar_chart({})
    with pytest.raises(ValueError, match="no series"):
        line_chart({})
    with pytest.raises(ValueError, match="y_range"):
        line_chart({"s": [(0, 1)]}, y_range=(1.0, 1.0))


def test_nice_ticks_cover_the_range_with_round_steps():
    assert nice_ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0.013, 7.9) == pytest.approx([0, 2, 4, 6, 8])
    assert nice_ticks(0, 0.25) == pytest.approx([0, 0.05, 0.1, 0.15, 0.2, 0.25])
    ticks = nice_ticks(-3.3, 17.2)
    assert ticks[0] <= -3.3 and ticks[-1] >= 17.2 and 3 <= len(ticks) <= 9
    assert nice_ticks(5, 5)[0] < 5 < nice_ticks(5, 5)[-1]


def test_charts_are_deterministic_and_ids_differ_between_charts():
    a = line_chart({"s": [(1, 1.0), (2, 2.0)]}, title="A")
    b = line_chart({"s": [(1, 1.0), (2, 2.0)]}, title="B")
    assert a == line_chart({"s": [(1, 1.0), (2, 2.0)]}, title="A")
    clip_a = _parse(a).find(f"{NS}defs/{NS}clipPath").get("id")
    clip_b = _parse(b).find(f"{NS}defs/{NS}clipPath").get("id")
    assert clip_a != clip_b


def test_charts_written_to_files_are_valid_standalone_svg(tmp_path):
    for name, svg in {"line.svg": line_chart({"s": [(1, 0.5), (2, 0.25)]}, title="KL ‖ é"),
                      "bar.svg": bar_chart({"s": {"a": 1.0}}, title="bars")}.items():
        path = tmp_path / name
        path.write_text(svg, encoding="utf-8")
        data = path.read_bytes()
        assert data.startswith(b'<svg xmlns="http://www.w3.org/2000/svg"')
        root = ET.parse(path).getroot()  # well-formed XML, from the file's bytes
        assert root.tag == NS + "svg" and float(root.get("width")) > 0 and root.get("viewBox")
