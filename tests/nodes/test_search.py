import asyncio
import json
import math

import pytest

from optigraph.errors import BudgetExceeded, UpstreamError
from optigraph.nodes.search import Tree, gather_survivors, max_children


def leaf_only(node):
    return not node["children"]


def two_level_tree():
    """root -> a (2 visits, mean 0.5), b (1 visit, mean 0.9); a -> a1 (1 visit, 0.2), a2 (1 visit, 0.8)."""
    tree = Tree.new({"name": "root"})
    a = tree.add_child(0, {"name": "a"})
    b = tree.add_child(0, {"name": "b"})
    a1 = tree.add_child(a, {"name": "a1"})
    a2 = tree.add_child(a, {"name": "a2"})
    tree.backpropagate(a1, 0.2)
    tree.backpropagate(a2, 0.8)
    tree.backpropagate(b, 0.9)
    return tree, a, b, a1, a2


def test_structure_and_paths():
    tree, a, b, a1, a2 = two_level_tree()
    assert len(tree) == 5 and tree.root["children"] == [a, b]
    assert [n["data"]["name"] for n in tree.path(a2)] == ["root", "a", "a2"]
    assert tree[a2]["depth"] == 2 and tree[a2]["parent"] == a
    assert [n["id"] for n in tree.children(a)] == [a1, a2]


def test_backpropagation_reaches_every_ancestor():
    tree, a, b, a1, a2 = two_level_tree()
    assert (tree.root["visits"], tree.root["value"]) == (3, pytest.approx(1.9))
    assert (tree[a]["visits"], tree.mean(a)) == (2, pytest.approx(0.5))
    assert tree.mean(b) == pytest.approx(0.9)
    assert tree.mean(tree.add_child(b)) is None


def test_uct_score():
    tree, a, b, a1, a2 = two_level_tree()
    assert tree.uct(a, 1.0) == pytest.approx(0.5 + math.sqrt(math.log(3) / 2))
    assert tree.uct(b, 0.0) == pytest.approx(0.9)
    assert tree.uct(tree.add_child(b), 1.0) == math.inf


def test_select_descends_more_than_one_level_by_uct():
    tree, a, b, a1, a2 = two_level_tree()
    # little exploration: b has the best mean and is a leaf
    assert tree.select(0.1, expandable=leaf_only) == b
    tree.backpropagate(tree.add_child(b), 0.0)  # b's subtree turns out bad
    tree.backpropagate(tree.add_child(b), 0.0)
    # now a is best at the root, and a2 below it: two levels down
    assert tree.select(0.1, expandable=leaf_only) == a2


def test_exploration_constant_favours_the_less_visited():
    tree = Tree.new()
    x, y = tree.add_child(0), tree.add_child(0)
    for _ in range(8):
        tree.backpropagate(x, 0.6)
    tree.backpropagate(y, 0.4)
    assert tree.select(0.0, expandable=leaf_only) == x
    assert tree.select(2.0, expandable=leaf_only) == y


def test_unvisited_children_come_first_and_ties_go_to_the_first():
    tree = Tree.new()
    x, y, z = tree.add_child(0), tree.add_child(0), tree.add_child(0)
    tree.backpropagate(x, 1.0)
    assert tree.select(0.2, expandable=leaf_only) == y
    tree.backpropagate(y, 1.0)
    tree.backpropagate(z, 1.0)
    assert tree.select(0.2, expandable=leaf_only) == x


def test_terminal_subtrees_are_skipped_and_an_exhausted_tree_selects_nothing():
    tree = Tree.new()
    x = tree.add_child(0, terminal=True)
    y = tree.add_child(0)
    tree.backpropagate(x, 1.0)
    tree.backpropagate(y, 0.0)
    assert tree.select(0.0, expandable=leaf_only) == y
    tree[y]["terminal"] = True
    assert tree.select(0.0, expandable=leaf_only) is None
    assert not tree.is_open(0, leaf_only)


def test_progressive_widening():
    assert [max_children(v) for v in range(6)] == [1, 2, 2, 2, 3, 3]

    def always(node):
        return not node["terminal"]

    tree = Tree.new()
    x = tree.add_child(0)
    tree.backpropagate(x, 0.5)
    # one visit allows two children: widen the root before descending
    assert tree.select(1.0, expandable=always, widening=True) == 0
    y = tree.add_child(0)
    tree.backpropagate(y, 0.9)
    # two visits allow two children: descend to the better, which may itself widen
    assert tree.select(0.0, expandable=always, widening=True) == y
    # without widening an expandable node with open children is descended through
    assert tree.select(0.0, expandable=always, widening=False) == y


def test_virtual_loss_spreads_concurrent_selections_and_reverts():
    tree = Tree.new()
    x, y = tree.add_child(0), tree.add_child(0)
    tree.backpropagate(x, 0.5)
    tree.backpropagate(y, 0.5)
    before = json.dumps(tree.to_state())
    first = tree.select(0.5, expandable=leaf_only)
    tree.add_virtual_loss(first)
    second = tree.select(0.5, expandable=leaf_only)
    assert {first, second} == {x, y}
    tree.revert_virtual_loss(first)
    assert json.dumps(tree.to_state()) == before


def test_best_child_uses_visits_then_mean_value():
    tree = Tree.new()
    x, y, z = tree.add_child(0), tree.add_child(0), tree.add_child(0)
    assert tree.best_child(0) is None
    tree.backpropagate(x, 0.3)
    tree.backpropagate(y, 0.9)
    tree.backpropagate(z, 0.5)
    assert tree.best_child(0) == y  # all tie on visits: the best mean wins
    tree.backpropagate(z, 0.5)
    assert tree.best_child(0) == z  # more visits win


def test_state_round_trip_is_json_and_a_copy():
    tree, a, b, a1, a2 = two_level_tree()
    raw = json.loads(json.dumps(tree.to_state()))
    again = Tree.from_state(raw)
    again.backpropagate(a1, 1.0)
    assert raw["nodes"][a1]["visits"] == 1 and again[a1]["visits"] == 2
    assert Tree.from_state(None, {"q": 1}).root["data"] == {"q": 1}
    with pytest.raises(ValueError):
        Tree([])


async def test_gather_survivors_keeps_upstream_failures_in_place():
    async def ok(v):
        await asyncio.sleep(0)
        return v

    async def fail(exc):
        raise exc

    results = await gather_survivors([ok(1), fail(UpstreamError("down")), ok(3)])
    assert results[0] == 1 and isinstance(results[1], UpstreamError) and results[2] == 3
    with pytest.raises(BudgetExceeded):
        await gather_survivors([ok(1), fail(BudgetExceeded("cap"))])
