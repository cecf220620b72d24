"""Teaches `spl` on one half of the shipped eval problems, through a running optigraph server.

    python scripts/spl_learn.py --base-url http://127.0.0.1:8000/v1 --model MODEL [--categories a,b]

The problems are split in two within each category, alternately in file order: the first, third...
problem of a category learn, the others are held out. Each learning problem is sent once as
`spl-MODEL` with `optillm_params: {"spl": {"learning": true, "reference": ANSWER}}` (no reference for
code problems: their answer is a program, judged by the model's own verdict instead). The held-out
ids are printed last, ready for `optigraph eval --ids ...` against the same server.

With `--test`, it learns nothing and runs the held-out problems instead, one at a time, each with
`spl` (inference only: the store as learned) and then `none`, graded by `optigraph eval`'s graders,
one JSON line per answer on stdout: pairs of results survive when a slow model stops the run early.
With an empty store `spl` sends exactly what `none` sends (tests/api/test_api_spl.py), so `none`
also stands for `spl` before learning.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter

import openai

from optigraph.evals.grading import grade
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
    ap.add_argument("--test", action="store_true", help="run the held-out problems with spl and none instead")
    args = ap.parse_args()
    problems = load_problems()
    if args.categories:
        problems = [p for p in problems if p.category in set(args.categories.split(","))]
    learn, held = split(problems)
    if args.test:
        return test(args, held)
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


def test(args: argparse.Namespace, held: list[Problem]) -> int:
    """Each held-out problem with spl, then none: one graded JSON line per answer."""
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=3600)
    for p in held:
        for approach in ("spl", "none"):
            row = {"id": p.id, "approach": approach, "expected": p.answer}
            try:
                r = client.chat.completions.create(
                    model=f"{approach}-{args.model}",
                    messages=[{"role": "user", "content": prompt_for(p)}],
                    max_tokens=args.max_tokens,
                    temperature=args.temperature,
                )
                text = r.choices[0].message.content or ""
                g = asyncio.run(grade(p, text))
                row.update(
                    correct=g.correct, answer=g.answer, run=(r.model_extra or {}).get("optigraph", {}).get("run_id")
                )
            except openai.OpenAIError as exc:
                row.update(correct=None, error=str(exc))
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
