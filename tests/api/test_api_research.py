"""deep_research and web_search end to end with the official openai client: a site of pages and a
SearXNG-style search API, both real HTTP servers on loopback (opened to the fetcher by the readurls
allow-list), and a folder of documents searched with BM25."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from api_stack import Stack, last_user_text, start_stack
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from upstream import ServerThread

from optigraph.core.cost import evaluate
from optigraph.engine.registry import builtin_registry

SEARCH_KEY = "search-secret"
PAGES = {
    "/fundy": "<html><body><nav>Home | About</nav><article><h1>Bay of Fundy</h1><p>The Bay of Fundy in Canada "
    "has the highest tides in the world, up to 16 metres.</p></article></body></html>",
    "/moon": "<html><body><h1>Why tides happen</h1><p>Tides are caused mainly by the gravity of the Moon, "
    "and partly by the Sun.</p></body></html>",
}


def site(searches: list[dict[str, Any]]) -> Starlette:
    """The pages, and a search API answering in SearXNG's JSON shape (results by keyword)."""

    async def page(request: Request) -> Response:
        return Response(PAGES[request.url.path], media_type="text/html")

    async def search(request: Request) -> Response:
        q = request.query_params.get("q", "")
        searches.append(
            {"q": q, "format": request.query_params.get("format"), "auth": request.headers.get("authorization")}
        )
        base = str(request.base_url).rstrip("/")
        results = []
        if "highest" in q:
            results.append({"title": "Bay of Fundy", "url": f"{base}/fundy", "content": "highest tides"})
            results.append({"title": "Intranet", "url": "http://10.1.2.3/secret", "content": "private"})
        if "cause" in q:
            results.append({"title": "Why tides happen", "url": f"{base}/moon", "content": "the Moon"})
        return JSONResponse({"query": q, "results": results})

    return Starlette(routes=[Route("/search", search), *(Route(p, page) for p in PAGES)])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("docs")
    (folder / "tides.md").write_text("# Tide tables\n\nSpring tides at Saint-Malo reach 13 metres.\n")
    (folder / "bread.txt").write_text("Sourdough needs a starter and a long rise.\n")
    searches: list[dict[str, Any]] = []
    mp = pytest.MonkeyPatch()
    mp.setenv("OPTIGRAPH_SEARCH_API_KEY", SEARCH_KEY)
    with ServerThread(site(searches)) as web:
        with start_stack(
            tmp_path_factory.mktemp("db") / "r.db",
            default_model="fake-model",
            readurls_allow=["127.0.0.1"],
            search_url=web.url + "/search",
            search_folder=folder,
        ) as stack:
            yield {"stack": stack, "web": web, "searches": searches}
    mp.undo()


@pytest.fixture
def stack(env: dict[str, Any]) -> Iterator[Stack]:
    env["stack"].reset()
    env["searches"].clear()
    yield env["stack"]
    env["stack"].reset()


def researcher(body: dict[str, Any], index: int) -> str:
    """The scripted model of a research run, by prompt."""
    prompt = last_user_text(body)
    if prompt.startswith("You are going to write a research report"):
        return "Tides\n- Causes\n- Records"
    if prompt.startswith("Write a first draft"):
        return "Tides rise and fall [NEEDS SOURCE]. The highest tides are somewhere [NEEDS SOURCE]."
    if prompt.startswith("Here is a draft research report"):
        if "Queries already searched: none" in prompt:
            return "1. highest tides in the world\n2. what is the cause of tides"
        return "NONE"
    if prompt.startswith("Revise the draft"):
        numbers = dict(re.findall(r"^\[(\d+)\] [^\n]*\((\S+)\)$", prompt, re.MULTILINE))
        by_url = {url.rsplit("/", 1)[1]: n for n, url in numbers.items()}
        assert "16 metres" in prompt and "gravity of the Moon" in prompt  # the pages' text reached the model
        return f"The Moon causes tides [{by_url['moon']}]. The Bay of Fundy has the highest, 16 m [{by_url['fundy']}]."
    if prompt.startswith("Write the final research report"):
        draft = prompt.split("Draft:\n", 1)[1]
        return f"# Tides\n\n## Causes and records\n\n{draft}\n\n## Conclusion\n\nThe Moon rules [7]."
    return "unexpected"


def run_detail(stack: Stack, run_id: str) -> dict[str, Any]:
    stack.run(run_id)
    with stack.http() as http:
        return http.get(f"/v1/runs/{run_id}").json()


def test_deep_research_searches_reads_rewrites_and_cites(env: dict[str, Any], stack: Stack) -> None:
    stack.script.fn = researcher
    response = stack.client().chat.completions.create(
        model="deep_research-fake-model",
        messages=[{"role": "user", "content": "Where are the highest tides, and why are there tides?"}],
        extra_body={"optillm_params": {"deep_research": {"max_iterations": 3}}},
    )
    report = response.choices[0].message.content
    base = env["web"].url
    assert report.startswith("# Tides\n") and "## Causes and records" in report
    refs = report.split("## References\n\n", 1)[1].splitlines()
    assert sorted(refs) == sorted([f"[1] Bay of Fundy: {base}/fundy", f"[2] Why tides happen: {base}/moon"])
    assert "[7]" not in report  # a citation of no source is dropped
    # the search API got both queries, in its JSON format, with the key from the environment
    assert sorted(s["q"] for s in env["searches"]) == ["highest tides in the world", "what is the cause of tides"]
    assert {(s["format"], s["auth"]) for s in env["searches"]} == {("json", f"Bearer {SEARCH_KEY}")}

    run_id = response.model_extra["optigraph"]["run_id"]
    detail = run_detail(stack, run_id)
    steps = [t["name"] for step in detail["threads"][0]["steps"] for t in step["tasks"]]
    assert [s for s in steps if s in ("plan", "draft", "research", "report")] == [
        "plan",
        "draft",
        "research",  # iteration 1: two queries, two pages read, draft rewritten
        "research",  # iteration 2: no gaps left
        "report",
    ]
    text = json.dumps(detail)
    assert "iteration 1: http://10.1.2.3/secret not read" in text  # the private address was refused
    assert "iteration 2: no gaps left" in text
    calls = [c["node"] for c in stack.calls(run_id)]
    assert calls == ["plan", "draft", "research.gaps", "research.rewrite", "research.gaps", "report"]
    spec = builtin_registry().get("deep_research")
    assert len(calls) <= evaluate(spec.calls, spec.validate_params({"max_iterations": 3})) == 9
    assert response.model_extra["optigraph"]["upstream_calls"] == 6


def test_deep_research_on_the_document_folder(stack: Stack) -> None:
    def model(body: dict[str, Any], index: int) -> str:
        prompt = last_user_text(body)
        if prompt.startswith("Here is a draft research report"):
            return "spring tides Saint-Malo" if "Queries already searched: none" in prompt else "NONE"
        if prompt.startswith("Revise the draft"):
            assert "13 metres" in prompt and "Sourdough" not in prompt
            return "Spring tides at Saint-Malo reach 13 m [1]."
        if prompt.startswith("Write the final research report"):
            return "# Saint-Malo\n\n## Tides\n\n" + prompt.split("Draft:\n", 1)[1]
        return "outline or draft"

    stack.script.fn = model
    response = stack.client().chat.completions.create(
        model="deep_research-fake-model",
        messages=[{"role": "user", "content": "How high are the tides at Saint-Malo?"}],
        extra_body={"optillm_params": {"deep_research": {"provider": "folder"}}},
    )
    assert response.choices[0].message.content.endswith("## References\n\n[1] Tide tables: file:tides.md\n")


def test_deep_research_reads_the_links_of_the_request(env: dict[str, Any], stack: Stack) -> None:
    url = env["web"].url + "/moon"

    def model(body: dict[str, Any], index: int) -> str:
        prompt = last_user_text(body)
        if prompt.startswith("Here is a draft research report"):
            return "why tides happen" if "Queries already searched: none" in prompt else "moon gravity"
        if prompt.startswith("Revise the draft"):
            assert "gravity of the Moon" in prompt
            return "Tides come from the Moon's gravity [1]."
        if prompt.startswith("Write the final research report"):
            return "# Tides\n\n## Cause\n\n" + prompt.split("Draft:\n", 1)[1]
        return "outline or draft"

    stack.script.fn = model
    response = stack.client().chat.completions.create(
        model="deep_research-fake-model",
        messages=[{"role": "user", "content": f"Why are there tides? Start from {url}"}],
        extra_body={"optillm_params": {"deep_research": {"provider": "urls"}}},
    )
    assert response.choices[0].message.content.endswith(f"## References\n\n[1] {url}: {url}\n")
    assert env["searches"] == []  # the search API was not asked
    detail = run_detail(stack, response.model_extra["optigraph"]["run_id"])
    assert "iteration 2: nothing new could be read; research stops" in json.dumps(detail)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("deep_research", {"max_iterations": 0}),
        ("deep_research", {"provider": "bing"}),
        ("deep_research", {"max_pages": 50}),
        ("deep_research", {"unknown": 1}),
        ("web_search", {"max_results": 0}),
        ("web_search", {"provider": "google"}),
        ("web_search", {"read_pages": "sometimes"}),
    ],
)
def test_bad_parameters_are_a_400(stack: Stack, name: str, params: dict[str, Any]) -> None:
    model = "deep_research-fake-model" if name == "deep_research" else "web_search&none-fake-model"
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"optillm_params": {name: params}},
        )
    assert caught.value.body["code"] == "invalid_approach_parameter"
    assert stack.log.bodies == []


def test_web_search_adds_numbered_results_with_their_pages(env: dict[str, Any], stack: Stack) -> None:
    response = stack.client().chat.completions.create(
        model="web_search&none-fake-model",
        messages=[{"role": "user", "content": "Where are the highest tides?"}],
    )
    sent = last_user_text(stack.log.bodies[0])
    base = env["web"].url
    assert sent.startswith("Where are the highest tides?\n\nSearch results (cite them by number")
    assert f"[1] Bay of Fundy ({base}/fundy)\n" in sent and "up to 16 metres" in sent
    assert "[2] Intranet (http://10.1.2.3/secret)\nprivate" in sent  # not read: only its snippet
    assert env["searches"][0]["q"] == "Where are the highest tides?"
    detail = run_detail(stack, response.model_extra["optigraph"]["run_id"])
    assert "web_search: [2] http://10.1.2.3/secret not read" in json.dumps(detail)
    assert response.model_extra["optigraph"]["upstream_calls"] == 1  # it calls no model itself


def test_web_search_on_the_folder_and_without_a_provider(tmp_path: Path, stack: Stack) -> None:
    stack.client().chat.completions.create(
        model="web_search&none-fake-model",
        messages=[{"role": "user", "content": "sourdough starter"}],
        extra_body={"optillm_params": {"web_search": {"provider": "folder", "max_results": 1}}},
    )
    sent = last_user_text(stack.log.bodies[0])
    assert "[1] Sourdough needs a starter and a long rise. (file:bread.txt)" in sent and "Saint-Malo" not in sent
    with start_stack(tmp_path / "n.db", default_model="fake-model") as bare:
        with pytest.raises(openai.BadRequestError) as caught:
            bare.client().chat.completions.create(
                model="web_search&none-fake-model",
                messages=[{"role": "user", "content": "x"}],
                extra_body={"optillm_params": {"web_search": {"provider": "web"}}},
            )
    assert caught.value.body["code"] == "search_unavailable"
    with start_stack(tmp_path / "d.db", default_model="fake-model") as bare:
        with pytest.raises(openai.BadRequestError) as caught:
            bare.client().chat.completions.create(
                model="deep_research-fake-model",
                messages=[{"role": "user", "content": "x"}],
                extra_body={"optillm_params": {"deep_research": {"provider": "folder"}}},
            )
        assert caught.value.body["code"] == "search_unavailable" and bare.log.bodies == []  # before any call
