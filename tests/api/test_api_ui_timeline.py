"""The run page's timeline (a waterfall of the run, its tasks and its upstream calls) and its graph
drawing, in headless Chromium: bars as wide as the times the API reports, concurrent calls drawn
overlapping, and a graph whose every edge stays inside its frame without crossing another."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_stack import Stack, start_stack
from test_api_ui import Browser, chromium_path, detail, serve

from optigraph.engine.inspection import iter_steps


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(chromium_path(), tmp_path_factory.mktemp("chromium") / "profile")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str]]]:
    with start_stack(tmp_path_factory.mktemp("timeline") / "t.db", default_model="fake-model") as stack:
        # Both branches' calls are held at the fake upstream until the two are in flight together.
        stack.log.hold_until = 2
        concurrent = serve(stack, "none|none-fake-model", "side by side")
        assert not stack.log.stalled and stack.log.max_in_flight == 2
        stack.reset()
        ids = {
            "concurrent": concurrent,
            "pipeline": serve(stack, "none&none-fake-model", "one after the other"),
            "moa|bon": serve(stack, "moa|bon-fake-model", "many ways"),
        }
        yield stack, ids


ROWS = """[...document.querySelectorAll('#waterfall .wf-row[data-kind]')].map(r => {
    const bar = r.querySelector('.wf-bar').getBoundingClientRect();
    const track = r.querySelector('.wf-track').getBoundingClientRect();
    return {kind: r.dataset.kind, name: r.dataset.name, status: r.dataset.status, tokens: r.dataset.tokens,
            start: +r.dataset.startMs, duration: +r.dataset.durationMs,
            left: bar.left - track.left, right: bar.right - track.left, width: bar.width, track: track.width};
})"""


def waterfall(browser: Browser) -> tuple[float, list[dict[str, Any]]]:
    return float(browser.eval("document.querySelector('#waterfall').dataset.spanMs")), browser.eval(ROWS)


@pytest.mark.parametrize("name", ["concurrent", "pipeline", "moa|bon"])
def test_waterfall_has_a_bar_per_task_and_call_as_long_as_it_took(
    browser: Browser, traced: tuple[Stack, dict[str, str]], name: str
) -> None:
    stack, ids = traced
    api = detail(stack, ids[name])
    browser.goto(f"{stack.url}/ui/runs/{ids[name]}")
    span, rows = waterfall(browser)
    calls = [r for r in rows if r["kind"] == "call"]
    tasks = [r for r in rows if r["kind"] == "task"]
    assert [r["kind"] for r in rows if r["kind"] == "run"] == ["run"]
    assert len(calls) == len(api["upstream_calls"]) > 0
    assert [t["name"] for t in tasks] == [
        task["name"] for th in api["threads"] for _, _, task in iter_steps(th["steps"])
    ]
    for row, call in zip(calls, api["upstream_calls"], strict=True):
        assert row["duration"] == pytest.approx(call["latency_ms"], abs=1e-3)
        assert row["status"] == call["status"] and row["tokens"] == str(call["usage"]["total_tokens"])
        assert call["node"] in row["name"]
    for row in rows:  # every bar: where and how long, in proportion to the run's span (to a pixel)
        assert 0 <= row["start"] and row["start"] + row["duration"] <= span + 1e-3
        assert row["width"] == pytest.approx(row["track"] * row["duration"] / span, abs=1.0)
        assert row["left"] == pytest.approx(row["track"] * row["start"] / span, abs=1.0)
    assert max(r["start"] + r["duration"] for r in rows) == pytest.approx(span, abs=1e-3)
    run_row = next(r for r in rows if r["kind"] == "run")
    for row in calls + tasks:  # on the run's own clock: inside the run's bar (to a millisecond)
        assert (
            run_row["start"] - 1 <= row["start"]
            and row["start"] + row["duration"] <= run_row["start"] + run_row["duration"] + 1
        )
    longest = max(rows, key=lambda r: r["duration"])
    assert longest["width"] == max(r["width"] for r in rows) > 0  # the longest-lasting row has the widest bar


def test_concurrent_calls_overlap_and_a_pipeline_is_ordered(
    browser: Browser, traced: tuple[Stack, dict[str, str]]
) -> None:
    stack, ids = traced
    browser.goto(f"{stack.url}/ui/runs/{ids['concurrent']}")
    _, rows = waterfall(browser)
    a, b = [r for r in rows if r["kind"] == "call"]
    # both were in flight at the fake upstream together, so each started before the other ended
    assert a["start"] < b["start"] + b["duration"] and b["start"] < a["start"] + a["duration"]
    assert a["left"] < b["right"] and b["left"] < a["right"]

    browser.goto(f"{stack.url}/ui/runs/{ids['pipeline']}")
    _, rows = waterfall(browser)
    first, second = [r for r in rows if r["kind"] == "call"]
    assert first["start"] < second["start"]  # the second stage asks after the first
    run_row = next(r for r in rows if r["kind"] == "run")
    assert run_row["tokens"] == str(detail(stack, ids["pipeline"])["usage"]["total_tokens"])


def _segments(d: str) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    points = [(float(x), float(y)) for x, y in re.findall(r"(-?[\d.]+),(-?[\d.]+)", d)]
    return list(itertools.pairwise(points))


def _cross(p: tuple[tuple[float, float], ...], q: tuple[tuple[float, float], ...]) -> bool:
    """Whether two segments properly intersect (touching at an end does not count)."""

    def orient(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    (a, b), (c, d) = p, q
    return orient(a, b, c) * orient(a, b, d) < 0 and orient(c, d, a) * orient(c, d, b) < 0


def _through_box(seg: tuple[tuple[float, float], ...], box: tuple[float, float, float, float]) -> bool:
    """Whether a segment passes through the inside of a box (sampled finely)."""
    (x1, y1), (x2, y2) = seg
    x, y, w, h = box
    return any(
        x + 1 < x1 + (x2 - x1) * t / 50 < x + w - 1 and y + 1 < y1 + (y2 - y1) * t / 50 < y + h - 1 for t in range(51)
    )


@pytest.mark.parametrize("width", [1280, 420])
def test_the_graph_fits_its_frame_and_edges_do_not_cross(
    browser: Browser, traced: tuple[Stack, dict[str, str]], width: int
) -> None:
    stack, ids = traced
    browser.send("Emulation.setDeviceMetricsOverride", width=width, height=1000, deviceScaleFactor=1, mobile=False)
    try:
        browser.goto(f"{stack.url}/ui/runs/{ids['moa|bon']}")
        fit = browser.eval("""(() => { const svg = document.querySelector('#graph');
            const box = svg.getBBox(), vb = svg.viewBox.baseVal;
            const s = svg.getBoundingClientRect(), f = document.querySelector('#graph-frame').getBoundingClientRect();
            const edges = [...svg.querySelectorAll('path.edge')].map(p => p.getBBox());
            return {box: [box.x, box.y, box.x + box.width, box.y + box.height], vb: [vb.width, vb.height],
                    svg: [s.left, s.top, s.right, s.bottom], frame: [f.left, f.top, f.right, f.bottom],
                    edges: edges.map(e => [e.x, e.y, e.x + e.width, e.y + e.height]),
                    page: document.documentElement.clientWidth}; })()""")
        # every drawn thing (boxes, edges) inside the viewBox, and the drawing inside its frame on the page
        for x0, y0, x1, y1 in [fit["box"], *fit["edges"]]:
            assert x0 >= 0 and y0 >= 0 and x1 <= fit["vb"][0] and y1 <= fit["vb"][1]
        assert fit["frame"][0] <= fit["svg"][0] and fit["svg"][2] <= fit["frame"][2] + 0.5
        assert fit["frame"][1] <= fit["svg"][1] and fit["svg"][3] <= fit["frame"][3] + 0.5
        assert fit["svg"][2] <= fit["page"]
        if width == 1280 and os.environ.get("OPTIGRAPH_WRITE_DOCS_SCREENSHOTS"):  # how docs/run-timeline.png is made
            browser.eval("document.querySelectorAll('details').forEach(d => d.remove())")
            browser.screenshot(Path(__file__).resolve().parents[2] / "docs" / "run-timeline.png")
    finally:
        browser.send("Emulation.clearDeviceMetricsOverride")

    nodes = browser.eval("""[...document.querySelectorAll('#graph g.node')].map(g => { const r = g.querySelector('rect');
        return [g.dataset.node, +r.getAttribute('x'), +r.getAttribute('y'), +r.getAttribute('width'),
                +r.getAttribute('height')]; })""")
    assert {n[0] for n in nodes} >= {"moa:sample", "moa:aggregate", "bon:sample", "bon:rate", "bon:select", "collect"}
    boxes = {n[0]: tuple(n[1:]) for n in nodes}
    edges = browser.eval("""[...document.querySelectorAll('#graph path.edge')].map(p =>
        [p.dataset.source, p.dataset.target, p.getAttribute('d')])""")
    assert len(edges) >= 10 and all(d.startswith("M") and "C" not in d for _, _, d in edges)  # no loops here
    drawn = [(s, t, seg) for s, t, d in edges for seg in _segments(d)]
    for (s1, t1, p), (s2, t2, q) in itertools.combinations(drawn, 2):
        if {s1, t1} & {s2, t2}:
            continue  # edges that share a node meet there
        assert not _cross(p, q), f"{s1}->{t1} crosses {s2}->{t2}"
    for s, t, seg in drawn:  # and no edge runs through a box it does not join
        for name, box in boxes.items():
            assert name in (s, t) or not _through_box(seg, box), f"{s}->{t} runs through {name}"
    for s, t, d in edges:  # every edge points down, from the bottom of its source to the top of its target
        points = [p for seg in _segments(d) for p in seg]
        assert points[0][1] == pytest.approx(boxes[s][1] + boxes[s][3], abs=0.1)
        assert points[-1][1] == pytest.approx(boxes[t][1], abs=0.1)
