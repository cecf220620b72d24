"""The run page's graph drawing holds every edge inside its frame (`moa|bon` curves sideways edges
out to the right), and the Mermaid text labels every node with its name, not an escaped id."""

from __future__ import annotations

import re
from xml.etree import ElementTree

import pytest
from api_stack import Stack

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
    curves = [p for p in paths if " C" in p.get("d")]
    assert curves  # the sideways edges (bon's rate -> select, moa -> collect) are curves
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
