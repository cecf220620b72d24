"""`optigraph eval`: runs approaches on problems against an OpenAI-compatible endpoint and reports
which approach pays (accuracy, tokens, upstream calls, wall time).

The endpoint is `--base-url` (a running optigraph server, or any OpenAI-compatible server), or an
optigraph server started in this process in front of `--upstream URL` or the local model. On an
optigraph server an approach is chosen with the model prefix `APPROACH-MODEL` (`none-MODEL` is plain
passthrough); on another server `none` sends MODEL as it is and other approaches keep the prefix
(which OptILLM understands too). Approaches run one after another, each over all problems with
`--concurrency` requests at a time, so an approach's total wall time is its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import httpx

from optigraph.evals.generated import default_problems
from optigraph.evals.grading import grade, math_verify_available
from optigraph.evals.problems import (
    Problem,
    ProblemError,
    load_problems,
    prompt_for,
    reasoning_gym_problems,
    select_problems,
)
from optigraph.evals.replay import DB_FILE, replay_folder
from optigraph.evals.replay_select import replay_select_folder
from optigraph.evals.report import (
    ApproachSummary,
    ProblemResult,
    comparisons,
    format_category_table,
    format_comparisons,
    format_table,
    plot,
    read_jsonl,
    summarize,
    svg_plot,
    write_jsonl,
    write_summary,
)
from optigraph.evals.stats import PairedComparison
from optigraph.sandbox import DEFAULT_LEVEL, LEVELS, SandboxLevel

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "plot.png"
SVG_PLOT_FILE = "plot.svg"  # written instead when matplotlib is not installed
SERVER_DB_FILE = "optigraph.db"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EvalError(Exception):
    """A setup problem that stops the whole eval (a bad flag, an unknown approach, no server)."""


@dataclass
class EvalConfig:
    approaches: list[str]
    model: str
    problems: list[Problem]
    out_dir: Path
    base_url: str | None = None  # None: an in-process optigraph server
    upstream: str | None = None  # the in-process server's upstream (None: the local model)
    api_key: str | None = None
    concurrency: int = 4
    max_tokens: int | None = None
    temperature: float | None = None
    params: dict[str, Any] | None = None  # optillm_params sent with every request
    timeout_s: float = 600.0
    instructions: bool = True
    progress: bool = True
    sandbox_level: SandboxLevel = DEFAULT_LEVEL  # for grading code and for the in-process server
    trials: int = 1  # repetitions of every approach on every problem
    seed: int | None = None  # with several trials, trial t sends seed + t (None: 0 + t)
    baseline: str = "none"  # the approach the others are compared with, problem by problem


@dataclass
class EvalOutcome:
    results: list[ProblemResult]
    elapsed: dict[str, float] = field(default_factory=dict)
    endpoint: str = ""
    optigraph_endpoint: bool | None = None


async def probe_endpoint(base_url: str, api_key: str | None, *, timeout_s: float = 30.0) -> set[str] | None:
    """The approaches an optigraph server lists on /v1/models; None when the endpoint is not one
    (or does not say). An endpoint that cannot be reached, or refuses the key, stops the eval."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            r = await http.get(base_url.rstrip("/") + "/models", headers=headers)
    except httpx.HTTPError as exc:
        raise EvalError(f"cannot reach {base_url}: {type(exc).__name__}: {exc}") from None
    if r.status_code in (401, 403):
        raise EvalError(f"{base_url} refused the key ({r.status_code}); pass --api-key")
    try:
        body = r.json()
    except ValueError:
        return None
    listed = body.get("approaches") if isinstance(body, dict) else None
    if not isinstance(listed, list):
        return None
    return {str(a.get("id")) for a in listed if isinstance(a, dict)}


def check_approaches(approaches: list[str], known: set[str]) -> None:
    """Every name in each expression must be an approach the server knows."""
    for expression in approaches:
        unknown = sorted({n for n in _NAME.findall(expression) if n not in known})
        if unknown:
            raise EvalError(
                f"unknown approach {', '.join(unknown)} in {expression!r}; the server knows: {', '.join(sorted(known))}"
            )


def request_model(approach: str, model: str, optigraph_endpoint: bool) -> str:
    if approach == "none" and not optigraph_endpoint:
        return model
    return f"{approach}-{model}"


def params_for(approach: str, params: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of `--params` an expression takes: keyed by approach name, only the approaches in
    it (an optigraph server refuses parameters for others); a flat object is sent as it is."""
    if not params:
        return None
    if not all(isinstance(v, dict) for v in params.values()):
        return params
    names = set(_NAME.findall(approach))
    return {k: v for k, v in params.items() if k in names} or None


def _error_text(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    status = getattr(exc, "status_code", None)
    text = f"{type(exc).__name__}: {message}" if status is None else f"{status} {type(exc).__name__}: {message}"
    return text[:1000]


def trial_seed(config: EvalConfig, trial: int) -> int | None:
    """The seed sent in trial `trial`: none for a single trial unless --seed was given, else seed + trial."""
    if config.trials <= 1 and config.seed is None:
        return None
    return (config.seed or 0) + trial


async def solve(
    client: Any, config: EvalConfig, approach: str, problem: Problem, optigraph_endpoint: bool, trial: int = 0
) -> ProblemResult:
    """One problem, one approach: the request, its usage and the grade. Never raises."""
    seed = trial_seed(config, trial)
    result = ProblemResult(
        approach=approach,
        model=config.model,
        id=problem.id,
        category=problem.category,
        grader=problem.grader,
        expected=problem.answer,
        trial=trial,
        seed=seed,
    )
    kwargs: dict[str, Any] = {}
    if seed is not None:
        kwargs["seed"] = seed
    if config.max_tokens is not None:
        kwargs["max_tokens"] = config.max_tokens
    if config.temperature is not None:
        kwargs["temperature"] = config.temperature
    params = params_for(approach, config.params)
    if params:
        kwargs["extra_body"] = {"optillm_params": params}
    started = time.perf_counter()
    try:
        response = await client.chat.completions.create(
            model=request_model(approach, config.model, optigraph_endpoint),
            messages=[{"role": "user", "content": prompt_for(problem, instructions=config.instructions)}],
            **kwargs,
        )
    except Exception as exc:  # one problem failing is recorded, never the end of the eval
        result.wall_s = time.perf_counter() - started
        result.error = _error_text(exc)
        result.grade_method = "none"
        return result
    result.wall_s = time.perf_counter() - started
    usage = getattr(response, "usage", None)
    result.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    result.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    extra = (getattr(response, "model_extra", None) or {}).get("optigraph") or {}
    result.run_id = extra.get("run_id")
    result.upstream_calls = extra.get("upstream_calls", None if optigraph_endpoint else 1)
    choices = getattr(response, "choices", None) or []
    text = (choices[0].message.content if choices and choices[0].message else None) or ""
    result.response = text
    try:
        g = await grade(problem, text, sandbox_level=config.sandbox_level)
    except Exception as exc:  # a grader failure counts as wrong and says why
        result.error = f"grading failed: {_error_text(exc)}"
        return result
    result.correct, result.answer, result.grade_method, result.grade_detail = g.correct, g.answer, g.method, g.detail
    return result


def _progress(total: int, enabled: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="problem", disable=not enabled, dynamic_ncols=True, file=sys.stderr)


async def run_eval(config: EvalConfig, *, results_file: TextIO | None = None) -> EvalOutcome:
    """Every approach on every problem against `config.base_url`; each result is appended to
    `results_file` (JSONL) as soon as it is graded."""
    import openai

    if config.base_url is None:
        raise EvalError("run_eval needs a base URL (see run_with_server)")
    # as long as a request may take: a busy upstream that serves one request at a time answers late
    known = await probe_endpoint(config.base_url, config.api_key, timeout_s=config.timeout_s)
    optigraph_endpoint = known is not None
    if known is not None:
        check_approaches(config.approaches, known)
    client = openai.AsyncOpenAI(
        base_url=config.base_url, api_key=config.api_key or "none", max_retries=0, timeout=config.timeout_s
    )
    outcome = EvalOutcome(results=[], endpoint=config.base_url, optigraph_endpoint=optigraph_endpoint)
    trials = max(1, config.trials)
    bar = _progress(len(config.approaches) * len(config.problems) * trials, config.progress)
    gate = asyncio.Semaphore(max(1, config.concurrency))

    async def one(approach: str, problem: Problem, trial: int) -> ProblemResult:
        async with gate:
            r = await solve(client, config, approach, problem, optigraph_endpoint, trial)
        if results_file is not None:
            results_file.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
            results_file.flush()
        if bar is not None:
            bar.update(1)
        return r

    try:
        for approach in config.approaches:
            if bar is not None:
                bar.set_description(approach)
            started = time.perf_counter()
            rows = await asyncio.gather(*(one(approach, p, t) for t in range(trials) for p in config.problems))
            outcome.elapsed[approach] = time.perf_counter() - started
            outcome.results.extend(rows)
    finally:
        if bar is not None:
            bar.close()
        await client.close()
    return outcome


def run_with_server(config: EvalConfig, *, results_file: TextIO | None = None) -> EvalOutcome:
    """`run_eval` against `config.base_url`, or against an optigraph server started here for it."""
    if config.base_url is not None:
        return asyncio.run(run_eval(config, results_file=results_file))
    from optigraph.evals.server import InProcessServer

    logging.getLogger("optigraph").setLevel(logging.ERROR)  # failures are in the results, not on the bar
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub
    server = InProcessServer(
        upstream=config.upstream, db_path=config.out_dir / SERVER_DB_FILE, sandbox_level=config.sandbox_level
    )
    try:
        server.__enter__()
    except RuntimeError as exc:
        raise EvalError(str(exc)) from None
    try:
        return asyncio.run(run_eval(replace(config, base_url=server.base_url), results_file=results_file))
    finally:
        server.__exit__()


def execute(config: EvalConfig, *, out: TextIO | None = None) -> EvalOutcome:
    """Runs the eval and writes results.jsonl, summary.json and plot.png into `config.out_dir`;
    prints the tables to `out` (default: standard output)."""
    out = out or sys.stdout
    config.out_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    with (config.out_dir / RESULTS_FILE).open("w", encoding="utf-8") as results_file:
        outcome = run_with_server(config, results_file=results_file)
    order = {a: i for i, a in enumerate(config.approaches)}
    index = {p.id: i for i, p in enumerate(config.problems)}
    outcome.results.sort(key=lambda r: (order.get(r.approach, 0), r.trial, index.get(r.id, 0)))
    # Rewritten in a stable order (the lines streamed during the run are in completion order).
    write_jsonl(outcome.results, config.out_dir / RESULTS_FILE)
    summaries = summarize(outcome.results, outcome.elapsed)
    compared = comparisons(outcome.results, config.baseline)
    where = config.base_url or (
        f"optigraph in-process -> {config.upstream}" if config.upstream else "optigraph in-process -> local model"
    )
    write_summary(
        summaries,
        config.out_dir / SUMMARY_FILE,
        compared=compared,
        trials=config.trials,
        model=config.model,
        endpoint=where,
        started=started.isoformat(timespec="seconds"),
        problems=len(config.problems),
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        params=config.params,
        concurrency=config.concurrency,
        math_verify=math_verify_available(),
    )
    plotted = plot(summaries, config.out_dir / PLOT_FILE, title=f"{config.model}: {len(config.problems)} problems")
    if not plotted:
        svg_plot(summaries, config.out_dir / SVG_PLOT_FILE, title=f"{config.model}: {len(config.problems)} problems")
    trials = f", {config.trials} trials" if config.trials > 1 else ""
    print(
        f"\nmodel {config.model} via {where}; {len(config.problems)} problems{trials}, "
        f"concurrency {config.concurrency}\n",
        file=out,
    )
    print_tables(summaries, compared, out)
    errors = [r for r in outcome.results if r.error]
    if errors:
        print(
            f"\n{len(errors)} request(s) failed (counted as wrong); first: {errors[0].approach} "
            f"{errors[0].id}: {errors[0].error}",
            file=out,
        )
    print(f"\nresults: {config.out_dir / RESULTS_FILE}", file=out)
    print(f"summary: {config.out_dir / SUMMARY_FILE}", file=out)
    print(f"plot:    {config.out_dir / (PLOT_FILE if plotted else SVG_PLOT_FILE)}", file=out)
    return outcome


def print_tables(summaries: list[ApproachSummary], compared: list[PairedComparison], out: TextIO) -> None:
    """The accuracy table, accuracy per trial and per category, and the paired comparisons."""
    print(format_table(summaries), file=out)
    for s in summaries:
        if s.trial_accuracies:
            per_trial = ", ".join(f"{100 * a:.1f}%" for a in s.trial_accuracies)
            print(f"{s.approach}: accuracy per trial {per_trial}", file=out)
    by_category = format_category_table(summaries)
    if by_category:
        print("\ncorrect by category:\n", file=out)
        print(by_category, file=out)
    table = format_comparisons(compared)
    if table:
        print(f"\npaired with {compared[0].baseline} on the same problems:\n", file=out)
        print(table, file=out)


def report_saved(
    paths: list[str],
    *,
    baseline: str,
    out_dir: Path | None,
    out: TextIO,
    ids: list[str] | None = None,
    categories: list[str] | None = None,
) -> None:
    """Reports results saved by earlier runs (their results.jsonl files, or folders holding one) as
    one eval: the tables, and with `out_dir` a summary.json and plot.png there. Approaches run in
    several files are pooled; `ids` and `categories` keep only those problems."""
    results: list[ProblemResult] = []
    for name in paths:
        path = Path(name)
        path = path / RESULTS_FILE if path.is_dir() else path
        try:
            results.extend(read_jsonl(path))
        except (OSError, ValueError, TypeError) as exc:
            raise EvalError(f"cannot read results from {path}: {exc}") from None
    if ids:
        results = [r for r in results if r.id in set(ids)]
    if categories:
        results = [r for r in results if r.category in set(categories)]
    if not results:
        raise EvalError("no results in " + ", ".join(paths) + (" for those problems" if ids or categories else ""))
    summaries = summarize(results, {})
    compared = comparisons(results, baseline)
    print_tables(summaries, compared, out)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_summary(summaries, out_dir / SUMMARY_FILE, compared=compared, sources=paths)
        title = f"{results[0].model}: accuracy against cost"
        if not plot(summaries, out_dir / PLOT_FILE, title=title):
            svg_plot(summaries, out_dir / SVG_PLOT_FILE, title=title)


def replay_saved(args: argparse.Namespace) -> None:
    """`--replay-adaptive FOLDER`: adaptive self-consistency on a fixed run's recorded samples
    (evals/replay.py); `--replay-select FOLDER`: bon's selection rule of --params on a bon run's
    recorded candidates and ratings (evals/replay_select.py). Written to --out as results.jsonl and
    reported beside the recorded run."""
    folder = Path(args.replay_adaptive or args.replay_select)
    if not (folder / RESULTS_FILE).is_file() or not (folder / DB_FILE).is_file():
        raise EvalError(f"{folder} holds no eval of its own (results.jsonl and {DB_FILE})")
    try:
        problems = load_problems(args.problems) if args.problems else default_problems()
    except (ProblemError, OSError) as exc:
        raise EvalError(str(exc)) from None
    try:
        params = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as exc:
        raise EvalError(f"--params is not JSON: {exc.msg}") from None
    approach = "self_consistency" if args.replay_adaptive else "bon"
    params = params.get(approach, params) if isinstance(params, dict) else {}
    try:
        if args.replay_adaptive:
            replayed = replay_folder(folder, problems, params=params)
        else:
            replayed = replay_select_folder(folder, problems, params=params)
    except ValueError as exc:  # pydantic's ValidationError included: bad stopping knobs
        raise EvalError(f"cannot replay: {exc}") from None
    if not replayed:
        raise EvalError(f"no recorded samples to replay in {folder}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(replayed, out_dir / RESULTS_FILE)
    report_saved(
        [str(folder / RESULTS_FILE), str(out_dir / RESULTS_FILE)],
        baseline=read_jsonl(folder / RESULTS_FILE)[0].approach if args.baseline == "none" else args.baseline,
        out_dir=out_dir,
        out=sys.stdout,
    )


# -- the command line ------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--approaches",
        default="none,bon,self_consistency",
        help="comma-separated approach expressions (default none,bon,self_consistency)",
    )
    p.add_argument(
        "--model", default=None, help="model name sent to the endpoint (required, except with --local: the local model)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--base-url",
        default=None,
        help="an OpenAI-compatible endpoint, e.g. a running optigraph at http://127.0.0.1:8000/v1",
    )
    where.add_argument(
        "--upstream", default=None, help="start optigraph in this process in front of this OpenAI-compatible upstream"
    )
    where.add_argument(
        "--local", action="store_true", help="start optigraph in this process in front of the local model (the default)"
    )
    p.add_argument("--api-key", default=None, help="bearer key for the endpoint (default: $OPENAI_API_KEY, else none)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--problems", default=None, help="a JSONL problem file (default: the shipped set)")
    src.add_argument(
        "--reasoning-gym",
        dest="reasoning_gym",
        default=None,
        metavar="DATASET",
        help="generate problems offline with reasoning-gym, e.g. gsm_symbolic",
    )
    p.add_argument("--count", type=int, default=20, help="problems to generate with --reasoning-gym (default 20)")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed for --reasoning-gym (default 0); with --trials, trial t sends seed + t to the model",
    )
    p.add_argument("--trials", type=int, default=1, help="run every approach on every problem N times, seeds differing")
    p.add_argument(
        "--baseline", default="none", help="compare every approach with this one, problem by problem (default none)"
    )
    p.add_argument(
        "--results",
        nargs="+",
        default=None,
        metavar="FILE",
        help="report saved results (results.jsonl files or their folders) instead of running anything",
    )
    p.add_argument(
        "--category",
        action="append",
        default=None,
        help="only problems of this category (repeatable; comma-separated also works)",
    )
    p.add_argument("--ids", default=None, help="only these problem ids (comma-separated)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems (after the filters)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    p.add_argument(
        "--replay-adaptive",
        dest="replay_adaptive",
        default=None,
        metavar="FOLDER",
        help="replay adaptive self-consistency on the samples of a fixed self_consistency eval in FOLDER "
        "(its --out), with the stopping knobs of --params; writes results for the replayed approach",
    )
    p.add_argument(
        "--replay-select",
        dest="replay_select",
        default=None,
        metavar="FOLDER",
        help="replay bon's choice on the candidates and ratings of a bon eval in FOLDER (its --out), with "
        "the selection of --params (default weighted_vote); writes results for the replayed approach",
    )
    p.add_argument("--out", default="eval-results", help="folder for results.jsonl, summary.json, plot.png")
    p.add_argument("--max-tokens", type=int, default=None, help="max_tokens sent with each request")
    p.add_argument("--temperature", type=float, default=None, help="temperature sent with each request")
    p.add_argument("--params", default=None, help='optillm_params as JSON, e.g. \'{"bon": {"n": 4}}\'')
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per request (default 600)")
    p.add_argument(
        "--no-instructions",
        dest="instructions",
        action="store_false",
        help="send prompts as they are, without the answer-format instruction",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument(
        "--sandbox-level",
        choices=tuple(LEVELS),
        default=DEFAULT_LEVEL,
        help="layers the sandbox must have before it runs code (grading, and the in-process server): "
        "strict (default), reduced (no namespaces), minimal (no namespaces, no Landlock); "
        "see docs/sandbox.md",
    )


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    approaches = [a.strip() for a in args.approaches.split(",") if a.strip()]
    if not approaches:
        raise EvalError("--approaches is empty")
    if args.trials < 1:
        raise EvalError("--trials must be at least 1")
    try:
        if args.reasoning_gym:
            problems = reasoning_gym_problems(args.reasoning_gym, args.count, args.seed or 0)
        else:
            problems = load_problems(args.problems) if args.problems else default_problems()
    except (ProblemError, OSError) as exc:
        raise EvalError(str(exc)) from None
    categories = [c.strip() for item in args.category or [] for c in item.split(",") if c.strip()]
    ids = [i.strip() for i in args.ids.split(",")] if args.ids else None
    problems = select_problems(problems, categories=categories or None, ids=ids, limit=args.limit)
    if not problems:
        raise EvalError("no problems to run (check --problems, --category, --ids and --limit)")
    params = None
    if args.params:
        try:
            params = json.loads(args.params)
        except json.JSONDecodeError as exc:
            raise EvalError(f"--params is not JSON: {exc.msg}") from None
        if not isinstance(params, dict):
            raise EvalError("--params must be a JSON object")
    model = args.model
    if model is None:
        if args.base_url or args.upstream:
            raise EvalError("--model is required with --base-url or --upstream")
        from optigraph.config import Settings

        model = Settings().local_model
    return EvalConfig(
        approaches=approaches,
        model=model,
        problems=problems,
        out_dir=Path(args.out),
        base_url=args.base_url,
        upstream=args.upstream,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
        concurrency=max(1, args.concurrency),
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        params=params,
        timeout_s=args.timeout,
        instructions=args.instructions,
        progress=args.progress,
        sandbox_level=args.sandbox_level,
        trials=args.trials,
        seed=args.seed,
        baseline=args.baseline,
    )


def main(args: argparse.Namespace) -> int:
    """The `optigraph eval` command; returns the exit status (2 for a setup error)."""
    try:
        if args.results:
            report_saved(
                args.results,
                baseline=args.baseline,
                out_dir=Path(args.out),
                out=sys.stdout,
                ids=[i.strip() for i in args.ids.split(",")] if args.ids else None,
                categories=[c.strip() for item in args.category or [] for c in item.split(",") if c.strip()] or None,
            )
            return 0
        if args.replay_adaptive or args.replay_select:
            replay_saved(args)
            return 0
        config = config_from_args(args)
        execute(config)
    except EvalError as exc:
        print(f"optigraph eval: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"optigraph eval: {exc}; install the extra: pip install 'optigraph[eval]'", file=sys.stderr)
        return 2
    return 0
