"""`deep_research`: test-time diffusion deep research (after TTD-DR, Han et al., 2025, arXiv 2507.16075,
as OptILLM's deep_research plugin does it): a draft report is "denoised" by retrieval, iteration after
iteration, and ends as a structured report with numbered citations.

Graph: START -> plan -> draft -> research -> (research again | report) -> END.

1. `plan`: the model outlines the report (the sections and what each must establish).
2. `draft`: a first draft from the model's own knowledge, gaps marked `[NEEDS SOURCE]`.
3. `research`, one node run per iteration (so each is checkpointed and shown in the run):
   the model lists up to `max_queries` search queries for what the draft lacks or cannot support
   (`NONE` when nothing is missing: research stops); each query goes to the search provider
   (plugins/search.py: `web`, `folder` or the request's `urls`; `auto` picks the first the server
   has); up to `max_pages` results not read before are read (web pages through readurls' safe
   fetcher: public addresses only unless `--readurls-allow`) and numbered as sources; the model
   rewrites the draft with them, citing `[n]`. When no new source could be read, research stops.
   It stops at the latest after `max_iterations`.
4. `report`: the final report in Markdown: a `# title`, `## sections`, citations `[n]`, and a
   `## References` list (numbered, with URLs) of the sources it cites, written by the code from the
   sources actually read (the model cannot invent a reference).

Every decision (queries, what was read or refused, why research stopped) is in the run's notes. A
search or a page that fails is noted, never an error. Calls: plan, draft, two per iteration (queries,
rewrite), report: at most 3 + 2 * max_iterations, one after the other.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text
from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.core.state import ApproachState
from optigraph.core.usage import Usage, add_usage, empty_usage
from optigraph.nodes.common import helper_params, text_answer
from optigraph.plugins.search import SearchFailed, SearchResult, provider_for, read_pages

PLAN_PROMPT = """You are going to write a research report that answers the request below. Outline \
it: a title, then the sections, each with one line on what it must establish. Write only the outline.

Request: {question}"""

DRAFT_PROMPT = """Write a first draft of the report for this request, following the outline, from \
what you know. Mark every claim that needs a source, and every gap, with [NEEDS SOURCE].

Request: {question}

Outline:
{plan}"""

GAPS_PROMPT = """Here is a draft research report for a request. List up to {max_queries} web search \
queries that would find what the draft is missing or cannot yet support (claims marked [NEEDS SOURCE], \
gaps, doubtful facts), one per line, without numbering. If nothing is missing, answer exactly NONE.

Request: {question}

Queries already searched: {searched}

Draft:
{draft}"""

REVISE_PROMPT = """Revise the draft research report with the new sources below. Add what they \
establish, correct what they contradict, and cite them by number in square brackets, e.g. [2], right \
after the claims they support. Keep the earlier citations. Remove [NEEDS SOURCE] marks the sources \
resolve. Write the whole revised draft, nothing else.

Request: {question}

Outline:
{plan}

Draft:
{draft}

Sources:
{sources}"""

REPORT_PROMPT = """Write the final research report for the request from the draft below, in \
Markdown: a first line `# <title>`, then sections with `## <heading>`, ending with a short conclusion. \
Keep the citations [n] after the claims they support, cite nothing else, and drop claims still marked \
[NEEDS SOURCE] unless you say they are unsourced. Do not write a reference list: it is added after \
the report.

Request: {question}

Sources (for the citations):
{titles}

Draft:
{draft}"""

_CITE = re.compile(r"\[(\d{1,3})\]")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


class DeepResearchParams(ApproachParams):
    provider: Literal["auto", "web", "folder", "urls"] = Field(
        "auto",
        description="Search provider: web (--search-url), folder (--search-folder), urls (the request's links); "
        "auto: the first the server has.",
    )
    max_iterations: int = Field(3, ge=1, le=10, description="Most research iterations (search, read, rewrite).")
    max_queries: int = Field(2, ge=1, le=5, description="Search queries per iteration.")
    results_per_query: int = Field(3, ge=1, le=10, description="Results taken from each query.")
    max_pages: int = Field(4, ge=1, le=20, description="New pages read per iteration.")
    max_chars: int = Field(4000, ge=200, le=50_000, description="Characters of each source given to the model.")
    temperature: float | None = client_temperature(0.3)


class ResearchState(ApproachState, total=False):
    plan: str
    draft: str
    sources: list[dict[str, Any]]  # {n, url, title, text}
    searched: list[str]  # every query searched so far
    iteration: int
    stopped: str  # why research stopped ("" while it goes on)


def _params(state: ApproachState) -> DeepResearchParams:
    return DeepResearchParams.model_validate(state.get("params") or {})


async def _ask(state: ApproachState, runtime: Runtime[RunContext], prompt: str, node: str) -> tuple[str, Usage]:
    p = _params(state)
    temperature = p.temperature if p.temperature is not None else (state.get("request") or {}).get("temperature")
    reply = await runtime.context.llm.chat(
        [{"role": "user", "content": prompt}],
        node=node,
        **helper_params(state, temperature=0.3 if temperature is None else temperature),
    )
    return reply.text.strip(), reply.usage


async def plan(state: ResearchState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    # A provider the server lacks is a 400 before any call, not after the draft.
    provider_for(_params(state).provider, runtime.context.settings, _question(state))
    text, usage = await _ask(state, runtime, PLAN_PROMPT.format(question=_question(state)), "plan")
    return {"plan": text, "usage": usage, "sources": [], "searched": [], "iteration": 0, "stopped": ""}


async def draft(state: ResearchState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    prompt = DRAFT_PROMPT.format(question=_question(state), plan=state.get("plan", ""))
    text, usage = await _ask(state, runtime, prompt, "draft")
    return {"draft": text, "usage": usage}


def _question(state: ApproachState) -> str:
    return last_user_text(state["messages"])


def _queries(text: str, limit: int, searched: list[str]) -> list[str]:
    if text.strip().strip(".").upper() == "NONE":
        return []
    out: list[str] = []
    for line in text.splitlines():
        query = _BULLET.sub("", line).strip().strip('"')
        if query and query.upper() != "NONE" and query not in searched and query not in out:
            out.append(query[:300])
    return out[:limit]


async def research(state: ResearchState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    p = _params(state)
    iteration = int(state.get("iteration") or 0) + 1
    question = _question(state)
    searched = list(state.get("searched") or [])
    sources = list(state.get("sources") or [])
    usage = empty_usage()
    prompt = GAPS_PROMPT.format(
        max_queries=p.max_queries, question=question, searched="; ".join(searched) or "none", draft=state.get("draft")
    )
    text, spent = await _ask(state, runtime, prompt, "research.gaps")
    usage = add_usage(usage, spent)
    queries = _queries(text, p.max_queries, searched)
    tag = f"deep_research: iteration {iteration}"
    if not queries:
        return {"iteration": iteration, "stopped": "no gaps left", "usage": usage, "notes": [f"{tag}: no gaps left"]}
    settings = runtime.context.settings
    provider = provider_for(p.provider, settings, question)
    found = await asyncio.gather(*(provider.search(q, p.results_per_query) for q in queries), return_exceptions=True)
    notes = [f"{tag}: {provider.name} search for {q!r}" for q in queries]
    known = {s["url"] for s in sources}
    fresh: list[SearchResult] = []
    for query, results in zip(queries, found):
        if isinstance(results, SearchFailed):
            notes.append(f"{tag}: search for {query!r} failed: {results}")
            continue
        if isinstance(results, BaseException):
            raise results
        for r in results:
            if r.url not in known and len(fresh) < p.max_pages:
                known.add(r.url)
                fresh.append(r)
    texts = await read_pages(fresh, settings)
    added: list[dict[str, Any]] = []
    for result, (body, error) in zip(fresh, texts):
        if error is not None or not body:
            notes.append(f"{tag}: {result.url} not read: {error or 'empty'}")
            continue
        source = {"n": len(sources) + 1, "url": result.url, "title": result.title, "text": body[: p.max_chars]}
        sources.append(source)
        added.append(source)
        notes.append(f"{tag}: source [{source['n']}] {result.url}")
    searched += queries
    if not added:
        notes.append(f"{tag}: nothing new could be read; research stops")
        return {
            "iteration": iteration,
            "searched": searched,
            "stopped": "nothing new found",
            "usage": usage,
            "notes": notes,
        }
    prompt = REVISE_PROMPT.format(
        question=question,
        plan=state.get("plan", ""),
        draft=state.get("draft", ""),
        sources="\n\n".join(f"[{s['n']}] {s['title']} ({s['url']})\n{s['text']}" for s in added),
    )
    revised, spent = await _ask(state, runtime, prompt, "research.rewrite")
    notes.append(f"{tag}: draft rewritten with {len(added)} new sources")
    return {
        "draft": revised or state.get("draft", ""),
        "sources": sources,
        "searched": searched,
        "iteration": iteration,
        "stopped": "",
        "usage": add_usage(usage, spent),
        "notes": notes,
    }


def _next(state: ResearchState) -> str:
    if state.get("stopped") or int(state.get("iteration") or 0) >= _params(state).max_iterations:
        return "report"
    return "research"


async def report(state: ResearchState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    sources = state.get("sources") or []
    titles = "\n".join(f"[{s['n']}] {s['title']}" for s in sources) or "(none)"
    prompt = REPORT_PROMPT.format(question=_question(state), titles=titles, draft=state.get("draft", ""))
    text, usage = await _ask(state, runtime, prompt, "report")
    text = _with_references(text, sources)
    why = state.get("stopped") or f"{_params(state).max_iterations} iterations done"
    note = f"deep_research: report after {state.get('iteration', 0)} iterations ({why}), {len(sources)} sources"
    return {"answers": [text_answer(text)], "usage": usage, "notes": [note]}


def _with_references(text: str, sources: list[dict[str, Any]]) -> str:
    """The report with a numbered reference list of the sources it cites; citations of numbers that
    are not sources are removed."""
    numbers = {s["n"]: s for s in sources}
    text = _CITE.sub(lambda m: m.group(0) if int(m.group(1)) in numbers else "", text)
    cited = sorted({int(n) for n in _CITE.findall(text)})
    if not text.lstrip().startswith("# "):
        text = "# Research report\n\n" + text
    if not cited:
        return text.rstrip() + "\n"
    refs = "\n".join(f"[{n}] {numbers[n]['title']}: {numbers[n]['url']}" for n in cited)
    return f"{text.rstrip()}\n\n## References\n\n{refs}\n"


def build() -> StateGraph:
    graph = StateGraph(ResearchState, context_schema=RunContext)
    graph.add_node("plan", plan)
    graph.add_node("draft", draft)
    graph.add_node("research", research)
    graph.add_node("report", report)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "draft")
    graph.add_edge("draft", "research")
    graph.add_conditional_edges("research", _next, ["research", "report"])
    graph.add_edge("report", END)
    return graph


SPEC = ApproachSpec(
    name="deep_research",
    description="Test-time diffusion deep research: a draft report refined by searching, reading and rewriting, "
    "ending in a structured report with numbered citations.",
    build=build,
    params=DeepResearchParams,
    papers=("arXiv:2507.16075",),
    calls="3 + 2 * max_iterations",
    rounds="3 + 2 * max_iterations",
)
