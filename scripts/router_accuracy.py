"""The router's classifier on a held-out split of its own data, and what it picks on the eval problems.

    python scripts/router_accuracy.py

Trains on three quarters of `optigraph/plugins/data/problem_types.jsonl` (every fourth prompt of each
type, from the second, is held out), prints the held-out accuracy and confusions, then trains on
everything (as the plugin does) and prints the type, confidence and route it gives each problem of
`optigraph eval`'s shipped set, with the routes per eval category.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from optigraph.evals.problems import load_problems
from optigraph.plugins.problem_types import ProblemClassifier, load_examples, split_examples
from optigraph.plugins.router import DEFAULT_ROUTES, RouterParams, choose


def main() -> int:
    examples = load_examples()
    train, held = split_examples(examples)
    model = ProblemClassifier(train)
    wrong = [(ex, model.predict(ex.prompt)) for ex in held]
    wrong = [(ex, p) for ex, p in wrong if p.label != ex.label]
    print(f"{len(examples)} labelled prompts: trained on {len(train)}, held out {len(held)}")
    print(f"held-out accuracy: {1 - len(wrong) / len(held):.3f} ({len(held) - len(wrong)}/{len(held)})")
    routes_right = sum(DEFAULT_ROUTES[p.label] == DEFAULT_ROUTES[ex.label] for ex, p in wrong)
    print(
        f"held-out route accuracy (a wrong type with the same route counts): "
        f"{(len(held) - len(wrong) + routes_right) / len(held):.3f}"
    )
    for ex, p in wrong:
        print(f"  {ex.label:>12} -> {p.label:<12} {p.confidence:.2f}  {ex.prompt[:70]}")

    full = ProblemClassifier(examples)
    params = RouterParams().model_dump()
    by_category: dict[str, Counter[str]] = defaultdict(Counter)
    print(
        "\noptigraph eval's problems (trained on every prompt; threshold "
        f"{params['threshold']}, below it: what the router wraps):"
    )
    for problem in load_problems():
        p = full.predict(problem.prompt)
        route, _ = choose(p.label, p.confidence, params)
        shown = route or "(wrapped)"
        by_category[problem.category][shown] += 1
        print(f"  {problem.id:<10} {p.label:<12} {p.confidence:.2f} -> {shown}")
    print("\nroutes per eval category:")
    for category, counts in by_category.items():
        print(f"  {category:<11} " + ", ".join(f"{r} {n}" for r, n in counts.most_common()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
