"""The compare page (/ui/compare) in headless Chromium: one prompt through several approaches, the
answers side by side as they stream, each with its calls, tokens, time and run page; the history of
comparisons; and the page's endpoint behind the same login as the rest of /ui."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_stack import Stack, start_stack
from test_api_ui import Browser, chromium_path, detail
from upstream import ChunkGate

from optigraph.engine import inspection

DOCS = Path(__file__).resolve().parents[2] / "docs"
COLUMNS = """[...document.querySelectorAll('#columns .column')].map(c => ({
    expression: c.dataset.expression, state: c.dataset.state, run_id: c.dataset.runId || null,
    calls: c.dataset.calls || null, tokens: c.dataset.totalTokens || null,
    answer: c.querySelector('pre.answer').textContent, status: c.querySelector('.stat-status').textContent,
    time: c.querySelector('.stat-time').textContent, href: (c.querySelector('a.trace-link') || {}).href || null}))"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(chromium_path(), tmp_path_factory.mktemp("chromium") / "profile")
    try:
        yield b
    finally:
        b.close()


class Gate(ChunkGate):
    """The fake upstream's chunk gate, switched on only by the test that watches a stream piece by piece
    (a graph's inner calls stream too, and their pieces never reach the page)."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False

    async def wait_for_client(self) -> None:
        if self.on:
            await super().wait_for_client()


@pytest.fixture(scope="module")
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.on = False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, gate: Gate) -> Iterator[Stack]:
    db = tmp_path_factory.mktemp("compare") / "c.db"
    with start_stack(db, default_model="fake-model", upstream={"chunk_gate": gate}) as s:
        yield s


def fill(browser: Browser, prompt: str, picked: list[str], typed: list[str]) -> None:
    browser.eval(f"document.querySelector('#prompt').value = {json.dumps(prompt)}")
    browser.eval(f"document.querySelector('#expressions').value = {json.dumps(chr(10).join(typed))}")
    for name in picked:
        browser.click(f"#approaches input[value='{name}']")
    assert browser.eval("[...document.querySelectorAll('#approaches input:checked')].map(e => e.value)") == picked


def release_while_streaming(browser: Browser, gate: Gate) -> list[list[dict]]:
    """Lets the fake upstream send its next piece each time the page has shown one more; returns what
    the columns showed along the way, until the comparison is done."""
    seen, shown = [], 0
    while not browser.eval("document.querySelector('#columns').dataset.state === 'done'"):
        columns = browser.eval(COLUMNS)
        length = sum(len(c["answer"]) for c in columns)
        if length > shown:
            shown = length
            seen.append(columns)
            gate.received()
        time.sleep(0.01)
    return seen


def wait_done(browser: Browser) -> None:
    browser.wait_for("document.querySelector('#columns').dataset.state === 'done'", timeout=60)


def test_a_column_shows_its_answer_as_it_streams(browser: Browser, stack: Stack, gate: Gate) -> None:
    gate.reset()
    gate.on = True
    try:
        browser.goto(stack.url + "/ui/compare")
        fill(browser, "one two three", ["none"], [])
        browser.click("#run-compare")
        seen = release_while_streaming(browser, gate)
    finally:
        gate.on = False
    assert not gate.stalled and gate.sent == 3  # "echo: one two three": every word after the first waited
    # Each piece was on the page before the next left the upstream; the usage (last) only at the end.
    streaming = [snapshot[0] for snapshot in seen]
    # (the last piece is not held: the page may have finished before it was looked at again)
    assert [c["answer"] for c in streaming][:3] == ["echo:", "echo: one", "echo: one two"]
    assert all(c["state"] == "streaming" and c["tokens"] is None for c in streaming[:3])
    final = browser.eval(COLUMNS)[0]
    assert final["state"] == "done" and final["answer"] == "echo: one two three"
    assert final["tokens"] == str(detail(stack, final["run_id"])["usage"]["total_tokens"])
    browser.eval("localStorage.clear()")


def test_compare_shows_answers_side_by_side(browser: Browser, stack: Stack, tmp_path: Path) -> None:
    browser.goto(stack.url + "/ui")
    browser.click("#compare-link")
    browser.wait_loaded(stack.url + "/ui/compare")
    assert browser.eval("document.querySelectorAll('script:not([src])').length") == 0  # no inline script
    names = browser.eval("[...document.querySelectorAll('#approaches input')].map(e => e.value)")
    assert {"none", "bon", "moa", "re2"} <= set(names)  # the registry's approaches
    assert browser.eval("document.querySelector('#model').value") == "fake-model"
    fill(browser, "what is best", ["none"], ["none&none", "none | none"])
    browser.click("#run-compare")
    wait_done(browser)
    columns = browser.eval(COLUMNS)
    assert [c["expression"] for c in columns] == ["none", "none&none", "none | none"]
    assert [c["state"] for c in columns] == ["done"] * 3
    assert columns[0]["answer"] == "echo: what is best"
    assert columns[1]["answer"] == "echo: echo: what is best"
    assert columns[2]["answer"] == "echo: what is best"
    for c in columns:  # each column is its own run, and says what the run cost
        run = detail(stack, c["run_id"])
        assert run["expression"] == inspection.canonical(c["expression"]) and run["status"] == "completed"
        assert c["calls"] == str(run["usage"]["calls"]) and c["tokens"] == str(run["usage"]["total_tokens"])
        assert c["href"] == f"{stack.url}/ui/runs/{c['run_id']}" and c["time"].endswith(" ms")
    assert [c["calls"] for c in columns] == ["1", "2", "2"]
    shot = browser.screenshot(tmp_path / "compare.png")
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if os.environ.get("OPTIGRAPH_WRITE_DOCS_SCREENSHOTS"):  # how docs/compare.png is made
        DOCS.joinpath("compare.png").write_bytes(shot.read_bytes())

    # A column's trace link opens its run's page.
    browser.click("#columns .column[data-expression='none&none'] a.trace-link")
    browser.wait_loaded(f"{stack.url}/ui/runs/{columns[1]['run_id']}")
    assert browser.texts("#run-approach") == ["none&none"]

    # The comparison is in the history, and shows again from there without running anything.
    runs_before = len(stack.log.bodies)
    browser.goto(stack.url + "/ui/compare")
    assert browser.eval("document.querySelectorAll('#history li.history-item').length") == 1
    assert "none vs none&none vs none | none" in browser.texts("#history li")[0]
    browser.click("#history li.history-item button.history-open")
    browser.wait_for("document.querySelector('#columns').dataset.fromHistory === 'true'")
    again = browser.eval(COLUMNS)
    assert [(c["expression"], c["answer"], c["run_id"], c["calls"], c["tokens"]) for c in again] == [
        (c["expression"], c["answer"], c["run_id"], c["calls"], c["tokens"]) for c in columns
    ]
    assert browser.eval("document.querySelector('#prompt').value") == "what is best"
    assert len(stack.log.bodies) == runs_before
    browser.click("#clear-history")
    browser.wait_for("document.querySelectorAll('#history li').length === 0")
    assert browser.eval("localStorage.getItem('optigraph.compare.history')") is None


def test_a_failing_expression_fails_its_column_only(browser: Browser, stack: Stack) -> None:
    browser.goto(stack.url + "/ui/compare")
    model_text = "<img src=x onerror='window.__pwned=1'>"
    fill(browser, model_text, [], ["none", "no-such-approach"])
    browser.click("#run-compare")
    wait_done(browser)
    ok, bad = browser.eval(COLUMNS)
    assert ok["state"] == "done" and ok["answer"] == f"echo: {model_text}"
    assert bad["state"] == "failed" and "no-such-approach" in bad["status"] and bad["answer"] == ""
    assert browser.eval("document.querySelectorAll('#columns img').length") == 0  # model text is text
    assert browser.eval("typeof window.__pwned") == "undefined"
    browser.eval("localStorage.clear()")


def test_compare_needs_the_login_like_the_rest_of_the_page(tmp_path: Path) -> None:
    with start_stack(tmp_path / "l.db", default_model="fake-model", api_key="sekrit") as locked:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "optillm_approach": "none"}
        with locked.http() as http:
            assert http.get("/ui/compare").status_code == 401  # the login form
            refused = http.post("/ui/api/chat/completions", json=body)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_session" and "x-optigraph-run-id" not in refused.headers
            login = http.post("/ui/login", data={"key": "sekrit", "next": "/ui/compare"})
            assert login.status_code == 303 and login.headers["location"] == "/ui/compare"
        session = {"optigraph_session": login.cookies["optigraph_session"]}
        with locked.http(cookies=session) as http:
            page = http.get("/ui/compare")
            assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
            answer = http.post("/ui/api/chat/completions", json=body)
            assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "echo: hi"
            assert locked.run(answer.headers["x-optigraph-run-id"])["status"] == "completed"
            form = http.post("/ui/api/chat/completions", data={"model": "fake-model"})  # not JSON: a form post
            assert form.status_code == 415 and form.json()["error"]["code"] == "unsupported_media_type"
            assert http.get("/ui/compare", params={"key": "sekrit"}).status_code == 400
        with locked.http(headers={"authorization": "Bearer sekrit"}) as http:  # the API key works as on /ui
            assert http.post("/ui/api/chat/completions", json=body).status_code == 200
        with locked.http() as http:  # the script holds no data: it is served to anyone
            script = http.get("/ui/assets/compare.js")
            assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
            assert "/ui/api/chat/completions" in script.text
