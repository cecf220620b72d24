"""What an eval found: one record per problem and approach, a summary per approach, the printed
tables, the results JSONL, a JSON summary and the plot."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optigraph.evals.stats import PairedComparison, paired, wilson_interval


@dataclass
class ProblemResult:
    """One problem answered by one approach (a line of results.jsonl)."""

    approach: str
    model: str
    id: str
    category: str
    grader: str
    expected: str
    correct: bool = False
    answer: str | None = None
    grade_method: str | None = None
    grade_detail: str | None = None
    error: str | None = None
    response: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    upstream_calls: int | None = None
    wall_s: float = 0.0
    run_id: str | None = None
    trial: int = 0  # which repetition (--trials), 0 for the first
    seed: int | None = None  # the seed sent with the request, if any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> str:
        """The problem in its trial, for pairing approaches on the same problems."""
        return self.id if not self.trial else f"{self.id}#{self.trial}"

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> ProblemResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in row.items() if k in known})


@dataclass
class ApproachSummary:
    approach: str
    problems: int
    correct: int
    errors: int
    mean_prompt_tokens: float
    mean_completion_tokens: float
    mean_upstream_calls: float | None
    mean_wall_s: float
    total_wall_s: float
    by_category: dict[str, tuple[int, int]] = field(default_factory=dict)  # category -> (correct, problems)
    trial_accuracies: tuple[float, ...] = ()  # one per trial, when there were several

    @property
    def accuracy(self) -> float:
        return self.correct / self.problems if self.problems else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% Wilson interval of the accuracy (answers of every trial pooled)."""
        return wilson_interval(self.correct, self.problems)

    @property
    def mean_tokens(self) -> float:
        return self.mean_prompt_tokens + self.mean_completion_tokens

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["accuracy"] = self.accuracy
        out["interval_95"] = list(self.interval)
        out["by_category"] = {k: {"correct": c, "problems": n} for k, (c, n) in self.by_category.items()}
        return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(results: list[ProblemResult], elapsed: dict[str, float]) -> list[ApproachSummary]:
    """One summary per approach, in the order approaches first appear; `elapsed` is each approach's
    wall-clock time over all its problems (with concurrency, less than the sum of the problems')."""
    groups: dict[str, list[ProblemResult]] = defaultdict(list)
    for r in results:
        groups[r.approach].append(r)
    out = []
    for approach, rows in groups.items():
        categories: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in rows:
            categories[r.category][0] += int(r.correct)
            categories[r.category][1] += 1
        calls = [r.upstream_calls for r in rows if r.upstream_calls is not None]
        trials: dict[int, list[bool]] = defaultdict(list)
        for r in rows:
            trials[r.trial].append(r.correct)
        out.append(
            ApproachSummary(
                approach=approach,
                problems=len(rows),
                correct=sum(r.correct for r in rows),
                errors=sum(r.error is not None for r in rows),
                mean_prompt_tokens=_mean([r.prompt_tokens for r in rows]),
                mean_completion_tokens=_mean([r.completion_tokens for r in rows]),
                mean_upstream_calls=_mean(calls) if calls else None,
                mean_wall_s=_mean([r.wall_s for r in rows]),
                total_wall_s=elapsed.get(approach, sum(r.wall_s for r in rows)),
                by_category={k: (v[0], v[1]) for k, v in sorted(categories.items())},
                trial_accuracies=tuple(sum(v) / len(v) for _, v in sorted(trials.items())) if len(trials) > 1 else (),
            )
        )
    return out


def comparisons(results: list[ProblemResult], baseline: str = "none") -> list[PairedComparison]:
    """Each approach against `baseline` on the problems (and trials) both answered; [] when the
    baseline did not run."""
    names = list(dict.fromkeys(r.approach for r in results))
    if baseline not in names:
        return []
    rows = [(r.approach, r.key, r.correct) for r in results]
    return [paired(name, baseline, rows) for name in names if name != baseline]


def format_comparisons(found: list[PairedComparison], *, ids: bool = True) -> str | None:
    """A Markdown table of paired comparisons, then (with `ids`) the problems each got right alone."""
    if not found:
        return None
    baseline = found[0].baseline
    header = ["approach", "pairs", "both right", "only approach", f"only {baseline}", "neither", "McNemar p"]
    rows = [
        [
            c.approach,
            str(c.pairs),
            str(c.both),
            str(len(c.only_approach)),
            str(len(c.only_baseline)),
            str(c.neither),
            f"{c.p_value:.3f}",
        ]
        for c in found
    ]
    text = _table(header, rows)
    if ids:
        for c in found:
            text += f"\n\n{c.approach} right, {baseline} wrong: {', '.join(c.only_approach) or '-'}"
            text += f"\n{baseline} right, {c.approach} wrong: {', '.join(c.only_baseline) or '-'}"
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def format_table(summaries: list[ApproachSummary]) -> str:
    """A Markdown table: accuracy (with count), mean tokens, upstream calls, wall time, per approach."""
    header = [
        "approach",
        "accuracy",
        "95% interval",
        "correct",
        "errors",
        "prompt tok",
        "completion tok",
        "upstream calls",
        "mean wall s",
        "total wall s",
    ]
    rows = [
        [
            s.approach,
            f"{100 * s.accuracy:.1f}%",
            f"{100 * s.interval[0]:.0f}-{100 * s.interval[1]:.0f}%",
            f"{s.correct}/{s.problems}",
            str(s.errors),
            f"{s.mean_prompt_tokens:.0f}",
            f"{s.mean_completion_tokens:.0f}",
            "-" if s.mean_upstream_calls is None else f"{s.mean_upstream_calls:.1f}",
            f"{s.mean_wall_s:.2f}",
            f"{s.total_wall_s:.1f}",
        ]
        for s in summaries
    ]
    return _table(header, rows)


def format_category_table(summaries: list[ApproachSummary]) -> str | None:
    """Accuracy per category and approach, or None when there is only one category."""
    categories = sorted({c for s in summaries for c in s.by_category})
    if len(categories) < 2:
        return None
    rows = []
    for s in summaries:
        cells = [s.approach]
        for c in categories:
            correct, n = s.by_category.get(c, (0, 0))
            cells.append(f"{correct}/{n}" if n else "-")
        rows.append(cells)
    return _table(["approach", *categories], rows)


def write_jsonl(results: list[ProblemResult], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[ProblemResult]:
    """The results a run wrote (its results.jsonl)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ProblemResult.from_dict(json.loads(line)) for line in lines if line.strip()]


def write_summary(
    summaries: list[ApproachSummary], path: Path, *, compared: list[PairedComparison] = (), **meta: Any
) -> None:
    body = {**meta, "approaches": [s.to_dict() for s in summaries]}
    body["paired"] = [{**asdict(c), "pairs": c.pairs, "p_value": c.p_value} for c in compared]
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, accuracy) points no other point beats on both (cheaper or as cheap, and more
    accurate or as accurate), by rising cost."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plot(summaries: list[ApproachSummary], path: Path, *, title: str = "") -> bool:
    """Accuracy (with its 95% interval) against mean tokens per problem, and against mean wall time,
    one point per approach, the Pareto front dashed. Returns False (and writes nothing) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(10, 4.2), dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no global backend switch
    panels = (
        (fig.add_subplot(1, 2, 1), "mean tokens per problem (prompt + completion)", lambda s: s.mean_tokens),
        (fig.add_subplot(1, 2, 2), "mean wall time per problem (s)", lambda s: s.mean_wall_s),
    )
    for ax, xlabel, x_of in panels:
        front = pareto_front([(x_of(s), s.accuracy) for s in summaries])
        if len(front) > 1:
            ax.plot([x for x, _ in front], [100 * y for _, y in front], "--", color="grey", alpha=0.6, zorder=2)
        hi = max((x_of(s) for s in summaries), default=1.0) or 1.0
        placed: list[tuple[float, float]] = []
        for s in sorted(summaries, key=lambda s: (-s.accuracy, x_of(s))):
            x, y = x_of(s), 100 * s.accuracy
            low, high = s.interval
            ax.errorbar(
                [x], [y], yerr=[[max(0.0, y - 100 * low)], [max(0.0, 100 * high - y)]], fmt="o", capsize=4, zorder=3
            )
            # a label near an earlier one (a long name runs right of its point) goes a line lower
            near = sum(1 for px, py in placed if abs(px - x) < 0.35 * hi and abs(py - y) < 6)
            ax.annotate(
                f"{s.approach} ({s.correct}/{s.problems})",
                (x, y),
                textcoords="offset points",
                xytext=(6, 6 - 11 * near),
                fontsize=8,
            )
            placed.append((x, y))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-5, 110)
        ax.set_xlim(0, hi * 1.35)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return True


def svg_plot(summaries: list[ApproachSummary], path: Path, *, title: str = "") -> None:
    """Accuracy (with its 95% interval) against mean completion tokens per problem, one point per
    approach and the Pareto front dashed, as a standalone SVG (no plotting library needed)."""
    from xml.sax.saxutils import escape

    width, height, left, right, top, bottom = 640, 400, 60, 30, 40, 50
    most = max((s.mean_completion_tokens for s in summaries), default=1.0) or 1.0
    span = most * 1.3

    def x(tokens: float) -> float:
        return left + (width - left - right) * tokens / span

    def y(share: float) -> float:
        return top + (height - top - bottom) * (1 - share)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<line x1="{left}" y1="{y(0)}" x2="{width - right}" y2="{y(0)}" stroke="black"/>',
        f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{y(1)}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">mean completion tokens per problem</text>',
        f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">accuracy</text>',
    ]
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{left - 6}" y="{y(share) + 4}" text-anchor="end">{100 * share:.0f}%</text>')
    front = pareto_front([(s.mean_completion_tokens, s.accuracy) for s in summaries])
    if len(front) > 1:
        points = " ".join(f"{x(t):.1f},{y(a):.1f}" for t, a in front)
        parts.append(f'<polyline points="{points}" fill="none" stroke="grey" stroke-dasharray="4 3"/>')
    for s in summaries:
        cx, cy = x(s.mean_completion_tokens), y(s.accuracy)
        low, high = s.interval
        parts.append(f'<line x1="{cx:.1f}" y1="{y(low):.1f}" x2="{cx:.1f}" y2="{y(high):.1f}" stroke="steelblue"/>')
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="steelblue"/>')
        label = escape(f"{s.approach} ({s.correct}/{s.problems})")
        parts.append(f'<text x="{cx + 7:.1f}" y="{cy - 6:.1f}">{label}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
