"""The run page's graph drawing holds every edge inside its frame (in layers, so no edge of `moa|bon`
runs sideways), and the Mermaid text labels every node with its name, not an escaped id."""

from __future__ import annotations

import re
from xml.etree import ElementTree

import pytest
from api_stack import Stack

from optigraph.api.ui_graph import svg_graph
from optigraph.engine.compiler import Compiler
from optigraph.engine.expression import parse
from optigraph.engine.registry import builtin_registry

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("model", ["moa|bon-fake-model", "bon&re2|moa-fake-model"])
def test_the_run_page_graph_fits_its_frame(stack: Stack, model: str) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    run_id = raw.headers["x-optigraph-run-id"]
    stack.run(run_id)
    with stack.http() as http:
        page = http.get(f"/ui/runs/{run_id}")
    assert page.status_code == 200
    svg = ElementTree.fromstring(re.search(r"<svg.*?</svg>", page.text, re.S).group(0))
    _, _, width, height = (float(v) for v in svg.get("viewBox").split())
    assert float(svg.get("width")) == width and float(svg.get("height")) == height
    paths = svg.findall(f"{SVG}path[@class]")
    for path in paths:  # no loops here: every edge goes down, none sideways (bon's rate -> select once did)
        ys = [float(v) for v in NUMBER.findall(path.get("d"))][1::2]
        assert " C" not in path.get("d") and ys == sorted(ys) and ys[0] < ys[-1], path.get("d")
    for path in paths:  # a Bezier curve stays inside the hull of its points: all of them must be inside
        xs_ys = [float(v) for v in NUMBER.findall(path.get("d"))]
        assert all(0 <= x <= width for x in xs_ys[0::2]), (path.get("d"), width)
        assert all(0 <= y <= height for y in xs_ys[1::2]), (path.get("d"), height)
    for rect in svg.iter(f"{SVG}rect"):
        x, w = float(rect.get("x")), float(rect.get("width"))
        assert 0 <= x and x + w <= width


def test_mermaid_declares_every_node_with_its_name() -> None:
    compiled = Compiler(builtin_registry(), None).compile(parse("bon&re2|moa"))
    text = compiled.mermaid()
    declared = dict(re.findall(r"^\t(\S+?)\((?:\[<p>)?([^)<]*)", text, re.M))
    used = {
        n
        for line in text.splitlines()
        if "-->" in line or "-.->" in line
        for n in re.findall(r"(\S+?)\s+-\.?->\s+(\S+?);", line)[0]
    }
    assert used <= set(declared), used - set(declared)  # Mermaid would label these with their escaped ids
    assert not [label for label in declared.values() if "\\" in label]
    assert declared[r"bon\26re2\3a2\2ere2\3areread_answer"] == "reread_answer"
    drawn = compiled.graph.get_graph(xray=True)
    assert len(declared) == len(drawn.nodes)


def _boxes_and_edges(svg: ElementTree.Element) -> tuple[dict[str, tuple[float, ...]], list[tuple[str, str, list]]]:
    boxes = {
        g.get("data-node"): tuple(float(g.find(f"{SVG}rect").get(k)) for k in ("x", "y", "width", "height"))
        for g in svg.iter(f"{SVG}g")
    }
    edges = []
    for p in svg.findall(f"{SVG}path[@class]"):
        nums = [float(v) for v in NUMBER.findall(p.get("d"))]
        edges.append((p.get("data-source"), p.get("data-target"), list(zip(nums[0::2], nums[1::2], strict=True))))
    return boxes, edges


@pytest.mark.parametrize("expression", ["mars", "mcts|bon", "self_consistency", "re2&z3", "bon&re2|moa"])
def test_loops_go_round_the_boxes_inside_the_frame(expression: str) -> None:
    drawn = Compiler(builtin_registry(), None).compile(parse(expression)).graph.get_graph(xray=True)
    edges = [(e.source, e.target, bool(e.conditional)) for e in drawn.edges]
    svg = ElementTree.fromstring(svg_graph(list(drawn.nodes), edges, set()))
    _, _, width, height = (float(v) for v in svg.get("viewBox").split())
    boxes, paths = _boxes_and_edges(svg)
    assert len(paths) == len(edges) and set(boxes) == set(drawn.nodes)
    for source, target, points in paths:
        assert all(0 <= x <= width and 0 <= y <= height for x, y in points), (source, target, points)
        sx, sy, sw, sh = boxes[source]
        tx, ty, tw, _ = boxes[target]
        # out of the bottom of the source, into the top of the target
        assert points[0][1] == pytest.approx(sy + sh, abs=0.1) and sx <= points[0][0] <= sx + sw
        assert points[-1][1] == pytest.approx(ty, abs=0.1) and tx <= points[-1][0] <= tx + tw
        for (x1, y1), (x2, y2) in zip(points, points[1:]):  # and through no box on the way
            for name, (bx, by, bw, bh) in boxes.items():
                inside = [
                    (x1 + (x2 - x1) * k / 40, y1 + (y2 - y1) * k / 40)
                    for k in range(41)
                    if bx + 1 < x1 + (x2 - x1) * k / 40 < bx + bw - 1 and by + 1 < y1 + (y2 - y1) * k / 40 < by + bh - 1
                ]
                assert not inside, f"{source}->{target} runs through {name}"
