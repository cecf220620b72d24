"""The run page's graph drawing: a layered SVG, top to bottom, that holds every edge in its frame.

A small Sugiyama-style layout: edges that close a loop are set aside (found by a depth-first walk
from `__start__`), every other node sits one layer below the deepest node that points at it (the
longest path, so `a -> b -> c` and `a -> c` never draw an edge sideways through a row), an edge that
skips layers passes through a placeholder in each layer it crosses (so it bends around the boxes
instead of running through them), and a few barycentre sweeps order each row to cut crossings. Loop
edges leave under their source, go back up in lanes to the right of everything (through the gaps
between rows, never through a box) and come into their target from above; the frame holds them.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

CHAR_W, PAD, BOX_H, GAP_X, GAP_Y, MARGIN = 7.4, 16, 28, 24, 46, 20
DUMMY_W, LANE_GAP, SWEEPS = 8.0, 18.0, 4


def _back_edges(nodes: list[str], out: dict[str, list[str]]) -> set[tuple[str, str]]:
    """The edges that point to a node still being walked (they close a loop), iteratively."""
    state: dict[str, int] = {}  # 1 on the walk's stack, 2 done
    back: set[tuple[str, str]] = set()
    roots = [n for n in nodes if n == "__start__"] + [n for n in nodes if n != "__start__"]
    for root in roots:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(out.get(root, ())))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                back.add((node, child))
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(out.get(child, ()))))
    return back


def _layers(nodes: list[str], forward: list[tuple[str, str]]) -> dict[str, int]:
    """Longest-path layers over the loop-free edges; `__end__` alone on the last one."""
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    indegree = {n: 0 for n in nodes}
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for s, t in forward:
        preds[t].append(s)
        succ[s].append(t)
        indegree[t] += 1
    layer: dict[str, int] = {}
    ready = [n for n in nodes if indegree[n] == 0]
    while ready:
        n = ready.pop(0)
        layer[n] = max((layer[p] + 1 for p in preds[n]), default=0)
        for t in succ[n]:
            indegree[t] -= 1
            if indegree[t] == 0:
                ready.append(t)
    for n in nodes:  # cannot happen once loops are set aside, but never lose a node
        layer.setdefault(n, max(layer.values(), default=-1) + 1)
    if "__end__" in layer and len(layer) > 1:
        layer["__end__"] = max(v for k, v in layer.items() if k != "__end__") + 1
    return layer


def _order(rows: dict[int, list[str]], links: list[tuple[str, str]]) -> None:
    """Barycentre sweeps, down then up: each row sorted by the mean place of its neighbours."""
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    for s, t in links:
        down.setdefault(s, []).append(t)
        up.setdefault(t, []).append(s)
    keys = sorted(rows)
    for sweep in range(SWEEPS):
        order = keys[1:] if sweep % 2 == 0 else keys[-2::-1]
        neighbours = up if sweep % 2 == 0 else down
        for k in order:
            place = {n: i for i, n in enumerate(rows[k - 1 if sweep % 2 == 0 else k + 1])}
            current = {n: i for i, n in enumerate(rows[k])}

            centre: dict[str, float] = {}
            for n in rows[k]:
                seen = [place[m] for m in neighbours.get(n, ()) if m in place]
                centre[n] = sum(seen) / len(seen) if seen else float(current[n])
            rows[k].sort(key=lambda n: (centre[n], current[n]))


def svg_graph(nodes: Iterable[str], edges: list[tuple[str, str, bool]], taken: set[str]) -> str:
    """The graph as an inline SVG: `g.node` boxes (`data-taken`), `path.edge` arrows."""
    nodes = list(dict.fromkeys(nodes))
    known = set(nodes)
    edges = [(s, t, c) for s, t, c in edges if s in known and t in known]
    out: dict[str, list[str]] = {n: [] for n in nodes}
    for s, t, _ in edges:
        out[s].append(t)
    back = _back_edges(nodes, out)
    forward = [(s, t) for s, t, _ in edges if (s, t) not in back and s != t]
    layer = _layers(nodes, forward)

    # Long edges pass through a placeholder in every layer between their ends.
    width_of = {n: max(60.0, len(n) * CHAR_W + PAD) for n in nodes}
    rows: dict[int, list[str]] = {k: [] for k in range(max(layer.values(), default=0) + 1)}
    for n in nodes:
        rows[layer[n]].append(n)
    chains: dict[tuple[str, str], list[str]] = {}
    links: list[tuple[str, str]] = []
    for s, t in dict.fromkeys(forward):
        chain = [s]
        for k in range(layer[s] + 1, layer[t]):
            dummy = f"\0{s}\0{t}\0{k}"
            width_of[dummy] = DUMMY_W
            rows[k].append(dummy)
            chain.append(dummy)
        chain.append(t)
        chains[(s, t)] = chain
        links.extend(zip(chain, chain[1:]))
    _order(rows, links)

    row_w = {k: sum(width_of[n] for n in r) + GAP_X * max(len(r) - 1, 0) for k, r in rows.items()}
    inner_w = max(row_w.values(), default=60.0)
    pos: dict[str, tuple[float, float]] = {}  # centre of each box (or placeholder)
    for k, row in rows.items():
        x = MARGIN + (inner_w - row_w[k]) / 2
        for n in row:
            pos[n] = (x + width_of[n] / 2, MARGIN + k * (BOX_H + GAP_Y) + BOX_H / 2)
            x += width_of[n] + GAP_X
    total_w = inner_w + 2 * MARGIN
    total_h = MARGIN * 2 + len(rows) * (BOX_H + GAP_Y) - GAP_Y

    paths: list[tuple[str, str, bool, str]] = []
    loops = 0
    for s, t, conditional in edges:
        if (s, t) in chains:
            points = [(pos[s][0], pos[s][1] + BOX_H / 2)]
            for dummy in chains[(s, t)][1:-1]:  # straight down through the placeholder's slot in the row
                points += [(pos[dummy][0], pos[dummy][1] - BOX_H / 2), (pos[dummy][0], pos[dummy][1] + BOX_H / 2)]
            points.append((pos[t][0], pos[t][1] - BOX_H / 2))
        else:  # a loop: down into the gap under its source, right to a lane of its own, up, in from above
            loops += 1
            lane = MARGIN + inner_w + LANE_GAP * loops
            shift = (loops - 1) % 4 * 4.0  # loops that share a gap do not share a line
            (x1, y1), (x2, y2) = pos[s], pos[t]
            sx, tx = x1 + width_of[s] / 2 - 8 - shift, x2 + width_of[t] / 2 - 8 - shift
            below = min(y1 + BOX_H / 2 + GAP_Y / 2 + shift, total_h - 4)
            above = max(y2 - BOX_H / 2 - GAP_Y / 2 - shift, 4.0)
            points = [
                (sx, y1 + BOX_H / 2),
                (sx, below),
                (lane, below),
                (lane, above),
                (tx, above),
                (tx, y2 - BOX_H / 2),
            ]
        d = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in points)
        paths.append((s, t, conditional, d))
    total_w += LANE_GAP * loops

    parts = [
        (
            f"<svg xmlns='http://www.w3.org/2000/svg' id='graph' viewBox='0 0 {total_w:.0f} {total_h:.0f}' "
            f"width='{total_w:.0f}' height='{total_h:.0f}' role='img' aria-label='the run graph'>"
        ),
        (
            "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' markerHeight='7' "
            "orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='#778'/></marker></defs>"
        ),
    ]
    for s, t, conditional, d in paths:
        classes = "edge" + (" conditional" if conditional else "") + (" taken" if s in taken and t in taken else "")
        parts.append(
            f"<path class='{classes}' data-source='{escape(s)}' data-target='{escape(t)}' d='{d}' "
            "marker-end='url(#arrow)'/>"
        )
    for n in nodes:
        x, y = pos[n]
        w = width_of[n]
        ran = n in taken
        rx = BOX_H / 2 if n in ("__start__", "__end__") else 4
        parts.append(
            f"<g class='node{' taken' if ran else ''}' data-node='{escape(n)}' "
            f"data-taken='{'true' if ran else 'false'}'><title>{escape(n)}{' (ran)' if ran else ''}</title>"
            f"<rect x='{x - w / 2:.1f}' y='{y - BOX_H / 2:.1f}' width='{w:.1f}' height='{BOX_H}' rx='{rx}'/>"
            f"<text x='{x:.1f}' y='{y + 4:.1f}' text-anchor='middle'>{escape(n)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)
