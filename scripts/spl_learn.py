"""Teaches `spl` on one half of the shipped eval problems, through a running optigraph server.

    python scripts/spl_learn.py --base-url http://127.0.0.1:8000/v1 --model MODEL [--categories a,b]

The problems are split in two within each category, alternately in file order: the first, third...
problem of a category learn, the others are held out. Each learning problem is sent once as
`spl-MODEL` with `optillm_params: {"spl": {"learning": true, "reference": ANSWER}}` (no reference for
code problems: their answer is a program, judged by the model's own verdict instead). The held-out
ids are printed last, ready for `optigraph eval --ids ...` against the same server (see
docs/plugins.md for the comparison this makes).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import openai

from optigraph.evals.problems import Problem, load_problems, prompt_for


def split(problems: list[Problem]) -> tuple[list[Problem], list[Problem]]:
    """Learning and held-out problems: alternately within each category, in file order."""
    seen: Counter[str] = Counter()
    learn: list[Problem] = []
    held: list[Problem] = []
    for p in problems:
        (learn if seen[p.category] % 2 == 0 else held).append(p)
        seen[p.category] += 1
    return learn, held


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="a running optigraph server's /v1 URL")
    ap.add_argument("--model", required=True, help="the upstream model")
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--categories", default=None, help="only these categories (comma-separated)")
    ap.add_argument("--held-out-only", action="store_true", help="print the held-out ids and stop")
    args = ap.parse_args()
    problems = load_problems()
    if args.categories:
        problems = [p for p in problems if p.category in set(args.categories.split(","))]
    learn, held = split(problems)
    if not args.held_out_only:
        client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=1800)
        for n, p in enumerate(learn, 1):
            spl = {"learning": True, **({"reference": p.answer} if p.grader != "code" else {})}
            try:
                r = client.chat.completions.create(
                    model=f"spl-{args.model}",
                    messages=[{"role": "user", "content": prompt_for(p)}],
                    max_tokens=args.max_tokens,
                    temperature=args.temperature,
                    extra_body={"optillm_params": {"spl": spl}},
                )
                run = (r.model_extra or {}).get("optigraph", {}).get("run_id")
                print(f"{n}/{len(learn)} {p.id}: run {run}", file=sys.stderr, flush=True)
            except openai.OpenAIError as exc:  # one failure is reported, the rest still learn
                print(f"{n}/{len(learn)} {p.id}: failed: {exc}", file=sys.stderr, flush=True)
    print(",".join(p.id for p in held))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
