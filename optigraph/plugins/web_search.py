"""`web_search`: the results of a search for the question, added to it as numbered sources.

`pre` searches the provider (`provider`: `web`, the operator's search API; `folder`, the documents of
`--search-folder`; `urls`, the request's own links; `auto`, the first of these the server has) for
`query` (default: the last user turn), keeps `max_results` results, reads each one's page when
`read_pages` is on (readurls' safe fetcher: public addresses only unless `--readurls-allow`), and
appends them to the last user turn as `[n] title (url)` with the page text, or the snippet, cut to
`max_chars`, asking the model to cite them by number. A search or a page that fails is noted in the
run, never an error. It calls no model.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.spec import ApproachParams, PluginSpec
from optigraph.core.state import PluginState
from optigraph.plugins.search import SearchFailed, provider_for, read_pages


class WebSearchParams(ApproachParams):
    provider: Literal["auto", "web", "folder", "urls"] = Field(
        "auto", description="Where to search: web (--search-url), folder (--search-folder), urls (the request's)."
    )
    query: str | None = Field(None, min_length=1, max_length=500, description="What to search; default: the question.")
    max_results: int = Field(5, ge=1, le=20, description="Results added.")
    read_pages: bool = Field(True, description="Read each result's page (else only the snippets are added).")
    max_chars: int = Field(3000, ge=100, le=100_000, description="Characters of each result's text added.")


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    p = WebSearchParams.model_validate(state.get("params") or {})
    question = last_user_text(state["messages"])
    settings = runtime.context.settings
    provider = provider_for(p.provider, settings, question)
    query = p.query or question[:500]
    try:
        results = await provider.search(query, p.max_results)
    except SearchFailed as exc:
        return {"notes": [f"web_search: {provider.name} search failed: {exc}"]}
    if not results:
        return {"notes": [f"web_search: {provider.name} found nothing for {query!r}"]}
    texts = await read_pages(results, settings) if p.read_pages else [(None, None)] * len(results)
    sections, notes = [], [f"web_search: {provider.name} search for {query!r}: {len(results)} results"]
    for n, (result, (text, error)) in enumerate(zip(results, texts), 1):
        body = text if text else result.snippet
        if error is not None:
            notes.append(f"web_search: [{n}] {result.url} not read: {error}")
        sections.append(f"[{n}] {result.title} ({result.url})\n{body[: p.max_chars]}")
    added = "Search results (cite them by number, e.g. [1]):\n\n" + "\n\n".join(sections)
    return {"messages": replace_last_user(state["messages"], f"{question}\n\n{added}"), "notes": notes}


SPEC = PluginSpec(
    name="web_search",
    description="Searches the web (a configured search API), a document folder or the request's links for the "
    "question and adds the results, numbered for citation.",
    pre=pre,
    params=WebSearchParams,
    needs=frozenset({"network"}),
)
