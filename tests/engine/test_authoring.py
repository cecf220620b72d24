"""The authoring package's pieces on their own: the decorator, and validation rules one at a time
(the whole path, from docs/authoring.md's examples, is tested in test_loading.py)."""

import pytest
import yaml
from langgraph.graph import StateGraph

from optigraph.core.spec import ApproachSpec
from optigraph.engine.authoring import DeclarativeSpecError, approach, parse_declarative
from optigraph.engine.authoring.reader import Document, read
from optigraph.engine.authoring.validate import (
    Edges,
    check_fan_out,
    check_reachable,
    read_edges,
    read_nodes,
    topological_order,
    validate,
)


def test_the_decorator_makes_a_spec_with_its_costs():
    @approach("twice", description="d", calls="2 * k", rounds="2", expected_calls="k")
    def build() -> StateGraph:
        raise AssertionError("not built here")

    assert isinstance(build, ApproachSpec)
    assert (build.name, build.calls, build.rounds, build.expected_calls, build.needs) == (
        "twice",
        "2 * k",
        "2",
        "k",
        frozenset({"text"}),
    )


def doc_of(text: str) -> tuple[Document, dict]:
    return read(text, "f.yaml")


def test_a_loop_is_reported_at_the_edge_that_closes_it():
    doc, data = doc_of("edges:\n  - a -> b\n  - b -> a\n")
    edges = read_edges(doc, data["edges"], ["a", "b"])
    assert topological_order(doc, "a", edges) == ["a", "b"]
    assert doc.errors == [(3, "edge b -> a closes a loop; a declarative graph has none")]


def test_unreachable_nodes_are_reported_at_their_key():
    doc, data = doc_of("nodes:\n  a: {}\n  b: {}\n")
    reached = check_reachable(doc, "a", {"a": [], "b": []})
    assert reached == ["a"] and doc.errors == [(3, "node 'b' is unreachable from the start node 'a'")]


def test_a_fan_out_node_needs_one_edge_in_and_one_out():
    doc, data = doc_of("nodes:\n  s: {kind: sample}\n  r: {kind: rate}\n  x: {kind: select}\n  y: {kind: select}\n")
    nodes = read_nodes(doc, data["nodes"], {})
    edges = Edges({"s": ["r"], "r": ["x", "y"], "x": [], "y": []}, {"s": [], "r": ["s"], "x": ["r"], "y": ["r"]}, {})
    check_fan_out(doc, nodes, edges, ["s", "r", "x", "y"])
    assert doc.errors == [(3, "fan-out node 'r' needs exactly one incoming and one outgoing edge")]


def test_node_settings_are_checked_against_the_kind_and_the_parameters():
    doc, data = doc_of("nodes:\n  s: {kind: sample, n: $k, temprature: 0.1}\n  g: {kind: generate, reread: null}\n")
    read_nodes(doc, data["nodes"], {})
    assert sorted(m for _, m in doc.errors) == [
        "node 'g': setting 'reread' needs a bool, got null",
        "node 's': setting 'n' refers to undefined parameter 'k'",
        "node 's': unknown setting 'temprature' for kind 'sample' (settings: n, temperature, max_tokens)",
    ]


def test_validate_stops_before_the_shape_rules_when_the_parts_are_wrong():
    doc, data = doc_of("name: x\nnodes:\n  a: {kind: nope}\n  b: {kind: generate}\n")
    assert validate(doc, data) is None
    assert [m for _, m in doc.errors] == [
        "node 'a': unknown node kind 'nope' (known: sample, rate, select, vote, critique, aggregate, generate, reread)"
    ]


def test_errors_name_the_file_and_line():
    with pytest.raises(DeclarativeSpecError) as caught:
        parse_declarative(yaml.safe_dump({"name": "x", "nodes": {"a": {"kind": "reread"}}}, sort_keys=False), "x.yaml")
    assert str(caught.value).startswith("x.yaml:2: missing final answer")
