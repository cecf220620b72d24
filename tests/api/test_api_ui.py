"""The web page (/ui) driven in headless Chromium over the DevTools protocol: what it shows.

Needs Debian's `chromium` (scripts/setup.sh --test installs it); skipped with a message without it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest
from api_stack import Stack, last_user_text, start_stack
from upstream import HTTPFailure, echo_responder

from optigraph.engine.inspection import iter_steps

websockets_sync = pytest.importorskip("websockets.sync.client")

REFUSE = "please refuse this"
HOSTILE = "<script>window.__pwned = 1</script><b>bold?</b>"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "headless Chromium is not installed: run `scripts/setup.sh --test` "
        "(or `apt-get install chromium`) to run the web page tests"
    )


class Browser:
    """Headless Chromium, one page, driven with Chrome DevTools Protocol commands over a websocket."""

    def __init__(self, exe: str, profile: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._ids = itertools.count(1)
        self._exit = contextlib.ExitStack()
        try:
            port = self._port(profile / "DevToolsActivePort")
            deadline = time.monotonic() + 20
            while True:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert pages, f"Chromium opened no page: {targets}"
            self.ws = self._exit.enter_context(
                websockets_sync.connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=20)
            )
            self.send("Page.enable")
            self.send("Runtime.enable")
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    def _port(self, path: Path) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"Chromium exited with status {self.proc.returncode}")
            if path.exists():
                first = path.read_text().splitlines()[:1]
                if first and first[0].strip().isdigit():
                    return int(first[0])
            time.sleep(0.05)
        raise AssertionError("Chromium did not open its DevTools port within 30s")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # events in between are not needed: the tests poll the page instead
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result") or {}

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}; page: {self.eval('location.href')}")
            time.sleep(0.05)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_loaded(url.split("?")[0].split("#")[0])

    def wait_loaded(self, url_prefix: str) -> None:
        self.wait_for(f"location.href.startsWith({json.dumps(url_prefix)}) && document.readyState === 'complete'")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = self.wait_for(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2}}; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)

    def texts(self, selector: str) -> list[str]:
        return self.eval(f"[...document.querySelectorAll({json.dumps(selector)})].map(e => e.innerText.trim())")

    def attrs(self, selector: str, name: str) -> list[str | None]:
        return self.eval(
            f"[...document.querySelectorAll({json.dumps(selector)})].map(e => e.getAttribute({json.dumps(name)}))"
        )

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._exit.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def refusing(body: dict[str, Any], index: int) -> Any:
    if REFUSE in last_user_text(body):
        return HTTPFailure(400, "refused by the fake upstream")
    return echo_responder(body, index)


def serve(stack: Stack, model: str, content: str, api_key: str = "client-key") -> str:
    client = stack.client(api_key=api_key)
    try:
        response = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": content}]
        )
        run_id = response.headers["x-optigraph-run-id"]
    except openai.APIStatusError as exc:
        run_id = exc.response.headers["x-optigraph-run-id"]
    stack.run(run_id)
    return run_id


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    exe = chromium_path()
    b = Browser(exe, tmp_path_factory.mktemp("chromium") / "profile")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str]]]:
    db = tmp_path_factory.mktemp("ui") / "optigraph.db"
    with start_stack(db, default_model="fake-model") as stack:
        stack.script.fn = refusing
        ids = {
            "passthrough": serve(stack, "fake-model", HOSTILE),
            "parallel": serve(stack, "none|none-fake-model", "in parallel"),
            "pipeline": serve(stack, "none&none-fake-model", "in a pipeline"),
            "failed": serve(stack, "none&none-fake-model", REFUSE),
        }
        yield stack, ids


def detail(stack: Stack, run_id: str) -> dict[str, Any]:
    with stack.http() as http:
        response = http.get(f"/v1/runs/{run_id}")
    response.raise_for_status()
    return response.json()


def test_list_shows_runs_newest_first_and_filters(browser: Browser, runs: tuple[Stack, dict[str, str]]) -> None:
    stack, ids = runs
    browser.goto(stack.url + "/ui")
    assert browser.eval("document.title") == "optigraph runs"
    assert browser.attrs("#runs tr.runs-row", "data-run-id") == list(ids.values())[::-1]
    statuses = dict(zip(browser.attrs("#runs tr.runs-row", "data-run-id"), browser.texts("#runs td.status")))
    assert statuses == {
        ids["passthrough"]: "completed",
        ids["parallel"]: "completed",
        ids["pipeline"]: "completed",
        ids["failed"]: "failed",
    }
    text = browser.eval("document.body.innerText")
    assert all(run_id in text for run_id in ids.values())
    assert "none|none" in text and "none&none" in text and "fake-model" in text

    browser.goto(stack.url + "/ui?status=failed")
    assert browser.attrs("#runs tr.runs-row", "data-run-id") == [ids["failed"]]
    browser.goto(stack.url + "/ui?approach=" + quote("none | none"))
    assert browser.attrs("#runs tr.runs-row", "data-run-id") == [ids["parallel"]]
    browser.goto(stack.url + "/ui?status=running")
    assert browser.eval("document.querySelector('#no-runs') !== null")


def test_clicking_a_run_opens_its_page(browser: Browser, runs: tuple[Stack, dict[str, str]], tmp_path: Path) -> None:
    stack, ids = runs
    run_id = ids["pipeline"]
    browser.goto(stack.url + "/ui")
    browser.click(f"tr[data-run-id='{run_id}'] a.run-link")
    browser.wait_loaded(f"{stack.url}/ui/runs/{run_id}")
    assert browser.texts("#run-id") == [run_id]
    assert browser.texts("#run-status") == ["completed"]
    assert browser.texts("#run-approach") == ["none&none"]

    # The graph: every node of the pipeline drawn, all of them taken.
    nodes = dict(zip(browser.attrs("#graph g.node", "data-node"), browser.attrs("#graph g.node", "data-taken")))
    assert nodes == {
        n: "true"
        for n in ("__start__", "1.none:passthrough", "1.none/done", "2.none:passthrough", "2.none/done", "__end__")
    }
    assert len(browser.attrs("#graph g.node.taken", "data-node")) == 6
    assert browser.eval("document.querySelectorAll('#graph path.edge').length") >= 5

    # The steps, in order, as the JSON API has them.
    api = detail(stack, run_id)
    expected = [task["name"] for t in api["threads"] for _, _, task in iter_steps(t["steps"])]
    assert browser.attrs("#steps tr.step-row", "data-task") == expected
    assert len(expected) == api["totals"]["tasks"] > 0
    # Writes are collapsed until opened.
    assert browser.eval("[...document.querySelectorAll('#steps details')].every(d => !d.open)")
    browser.click("#steps details summary")
    assert browser.wait_for("document.querySelector('#steps details').open")
    assert browser.eval("document.querySelector('#steps details pre.writes').innerText.length") > 0

    # The upstream calls: one per stage, each with the answer it got.
    assert browser.texts("#calls tr.call-row td.call-status") == ["ok", "ok"]
    assert len(api["upstream_calls"]) == 2
    answers = browser.eval("[...document.querySelectorAll('#calls pre.answer')].map(e => e.textContent)")
    assert answers == ["echo: in a pipeline", "echo: echo: in a pipeline"]
    shot = browser.screenshot(tmp_path / "run.png")
    data = shot.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n")


def test_parallel_and_passthrough_graphs(browser: Browser, runs: tuple[Stack, dict[str, str]]) -> None:
    stack, ids = runs
    browser.goto(f"{stack.url}/ui/runs/{ids['parallel']}")
    taken = set(browser.attrs("#graph g.node.taken", "data-node"))
    assert taken == {"__start__", "none:passthrough", "none#2:passthrough", "collect", "__end__"}
    assert len(browser.attrs("#calls tr.call-row", "data-node")) == 2
    api = detail(stack, ids["parallel"])
    assert len(browser.attrs("#steps tr.step-row", "data-task")) == api["totals"]["tasks"]

    browser.goto(f"{stack.url}/ui/runs/{ids['passthrough']}")
    nodes = dict(zip(browser.attrs("#graph g.node", "data-node"), browser.attrs("#graph g.node", "data-taken")))
    assert nodes == {"__start__": "true", "passthrough": "true", "__end__": "true"}
    assert browser.eval("document.querySelector('#no-steps') !== null")  # not checkpointed: no steps
    assert browser.attrs("#calls tr.call-row", "data-node") == ["passthrough"]


def test_failed_run_shows_the_path_it_took(browser: Browser, runs: tuple[Stack, dict[str, str]]) -> None:
    stack, ids = runs
    browser.goto(f"{stack.url}/ui/runs/{ids['failed']}")
    assert browser.texts("#run-status") == ["failed"]
    nodes = dict(zip(browser.attrs("#graph g.node", "data-node"), browser.attrs("#graph g.node", "data-taken")))
    assert nodes["__start__"] == "true" and nodes["1.none:passthrough"] == "true"
    assert nodes["2.none:passthrough"] == "false" and nodes["__end__"] == "false"
    statuses = browser.texts("#calls tr.call-row td.call-status")
    assert len(statuses) == 1 and not statuses[0].startswith("ok")
    assert "refused by the fake upstream" in browser.eval("document.body.textContent")
    assert browser.eval("document.querySelector('#run-error') !== null")


def test_model_text_is_escaped_not_run(browser: Browser, runs: tuple[Stack, dict[str, str]]) -> None:
    stack, ids = runs
    browser.goto(f"{stack.url}/ui/runs/{ids['passthrough']}")
    browser.click("#calls tr.call-row td:last-child details summary")
    browser.wait_for("document.querySelector('#calls pre.answer').offsetParent !== null")
    assert browser.texts("#calls pre.answer") == [f"echo: {HOSTILE}"]
    assert browser.eval("document.querySelectorAll('script').length") == 0
    assert browser.eval("document.querySelectorAll('b').length") == 0
    assert browser.eval("typeof window.__pwned") == "undefined"
    browser.goto(stack.url + "/ui")  # the list and its filter form echo input escaped too
    browser.goto(stack.url + "/ui?approach=" + quote("'><script>window.__pwned=1</script>"))
    assert browser.eval("document.querySelectorAll('script').length") == 0
    assert browser.eval("document.querySelector('input[name=approach]').value") == "'><script>window.__pwned=1</script>"


def test_unknown_run(browser: Browser, runs: tuple[Stack, dict[str, str]]) -> None:
    stack, _ = runs
    browser.goto(f"{stack.url}/ui/runs/no-such-run")
    assert "No run with id no-such-run" in browser.eval("document.body.innerText")


def test_page_needs_the_api_key(browser: Browser, tmp_path: Path) -> None:
    with start_stack(tmp_path / "optigraph.db", default_model="fake-model", api_key="sekrit") as stack:
        run_id = serve(stack, "fake-model", "hello", api_key="sekrit")
        browser.send("Network.enable")
        browser.send("Network.clearBrowserCookies")
        browser.goto(f"{stack.url}/ui/runs/{run_id}")
        assert browser.eval("document.querySelector('input[name=key]') !== null")
        assert run_id not in browser.eval("document.body.innerText")
        browser.goto(stack.url + "/ui?key=sekrit")  # a key in the address is refused, even the right one
        assert "not accepted in the address" in browser.eval("document.body.innerText")
        assert browser.send("Network.getCookies", urls=[stack.url + "/ui"])["cookies"] == []
        browser.goto(f"{stack.url}/ui/runs/{run_id}")
        browser.eval("document.querySelector('input[name=key]').value = 'wrong'")
        browser.click("form button")
        browser.wait_for("document.body !== null && document.body.innerText.includes('not valid')")
        # The form posts the key; the page comes back with a session cookie, and the key is nowhere.
        browser.eval("document.querySelector('input[name=key]').value = 'sekrit'")
        browser.click("form button")
        browser.wait_for("document.querySelector('#run-id') !== null")
        assert browser.texts("#run-id") == [run_id] and "sekrit" not in browser.eval("location.href")
        cookies = browser.send("Network.getCookies", urls=[stack.url + "/ui"])["cookies"]
        assert [(c["name"], c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == [
            ("optigraph_session", True, "Strict", "/ui")
        ]
        assert "sekrit" not in cookies[0]["value"] and cookies[0]["session"] is False  # it carries an expiry
        browser.goto(stack.url + "/ui")
        browser.wait_for(f"document.querySelector(\"tr[data-run-id='{run_id}']\") !== null")
        browser.click("form.logout button")
        browser.wait_for("document.querySelector('input[name=key]') !== null")
        assert browser.send("Network.getCookies", urls=[stack.url + "/ui"])["cookies"] == []
        browser.send("Network.clearBrowserCookies")


# ---- sessions, without a browser -------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("locked") / "l.db", default_model="fake-model", api_key="sekrit") as s:
        yield s


@pytest.fixture
def clock(locked: Stack) -> Iterator[list[float]]:
    """The locked server's session clock, set by the test: `clock[0]` is now."""
    sessions = locked.server.server.config.app.state.ui_sessions
    now = [1_900_000_000.0]
    sessions.clock = lambda: now[0]
    yield now
    sessions.clock = time.time


def log_in(stack: Stack, key: str, *, next_page: str = "/ui", headers: dict[str, str] | None = None) -> httpx.Response:
    with stack.http() as http:
        return http.post("/ui/login", data={"key": key, "next": next_page}, headers=headers)


def session_of(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    return response.cookies["optigraph_session"]


def page(stack: Stack, path: str = "/ui", session: str | None = None, **kw: Any) -> httpx.Response:
    with stack.http(cookies={"optigraph_session": session} if session else None) as http:
        return http.get(path, **kw)


def test_login_sets_a_signed_expiring_session_cookie(locked: Stack, clock: list[float]) -> None:
    r = log_in(locked, "sekrit", next_page="/ui/runs/abc")
    assert r.status_code == 303 and r.headers["location"] == "/ui/runs/abc"
    cookie = r.headers["set-cookie"]
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= flags and "secure" not in flags  # plain HTTP here
    assert "samesite=strict" in cookie.lower() and "path=/ui" in cookie.lower()
    assert f"max-age={locked.settings.ui_session_ttl_s}" in cookie.lower()
    session = session_of(r)
    assert "sekrit" not in session and session.split(".")[0] == str(int(clock[0]) + locked.settings.ui_session_ttl_s)
    assert page(locked, session=session).status_code == 200
    assert page(locked).status_code == 401

    # behind a TLS-terminating proxy on loopback (X-Forwarded-Proto: https) the cookie is Secure
    secure = log_in(locked, "sekrit", headers={"x-forwarded-proto": "https"}).headers["set-cookie"]
    assert "secure" in {part.strip().lower() for part in secure.split(";")}

    assert log_in(locked, "sekrit", next_page="https://elsewhere.example/").headers["location"] == "/ui"
    assert log_in(locked, "sekrit", next_page="//elsewhere.example/ui").headers["location"] == "/ui"


def test_a_tampered_session_is_refused(locked: Stack, clock: list[float]) -> None:
    session = session_of(log_in(locked, "sekrit"))
    expires, caller, mac = session.split(".")
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    other = caller[:-2] + ("AA" if caller[-2:] != "AA" else "AB")  # another tenant or scopes, same MAC
    for bad in (
        f"{expires}.{caller}.{flipped}",
        f"{int(expires) + 3600}.{caller}.{mac}",
        f"{expires}.{other}.{mac}",
        expires,
        f".{caller}.{mac}",
        "sekrit",
        "x.y.z",
    ):
        r = page(locked, session=bad)
        assert r.status_code == 401 and "session has ended" in r.text, bad
    with locked.http(cookies={"optigraph_key": "sekrit"}) as http:  # the old raw-key cookie is no longer a login
        assert http.get("/ui").status_code == 401
    assert page(locked, session=session).status_code == 200


def test_an_expired_session_is_refused(locked: Stack, clock: list[float]) -> None:
    session = session_of(log_in(locked, "sekrit"))
    clock[0] += locked.settings.ui_session_ttl_s - 1
    assert page(locked, session=session).status_code == 200
    clock[0] += 1
    r = page(locked, session=session)
    assert r.status_code == 401 and "session has ended" in r.text
    assert page(locked, "/ui/runs/some-run", session=session).status_code == 401


def test_a_key_in_the_query_string_is_refused(locked: Stack, clock: list[float]) -> None:
    session = session_of(log_in(locked, "sekrit"))
    for path in ("/ui", "/ui/runs/some-run"):
        for with_session in (None, session):
            r = page(locked, path, session=with_session, params={"key": "sekrit"})
            assert r.status_code == 400 and "not accepted in the address" in r.text
            assert "set-cookie" not in r.headers


def test_logout_clears_the_session(locked: Stack, clock: list[float]) -> None:
    with locked.http() as http:
        r = http.post("/ui/logout")
    assert r.status_code == 303 and r.headers["location"] == "/ui"
    cookie = r.headers["set-cookie"].lower()
    assert cookie.startswith('optigraph_session="";') and "max-age=0" in cookie and "path=/ui" in cookie


@pytest.mark.parametrize("key", ["sekrit", "wrong", "", "sekrit ", "SEKRIT", "sekri", "sekrit\u00e9"])
def test_the_api_and_the_page_accept_the_same_keys(locked: Stack, clock: list[float], key: str) -> None:
    # (HTTP drops a header value's trailing space, and a non-ASCII value cannot be sent at all)
    header = {"authorization": f"Bearer {key}".strip()} if key.isascii() else {}
    with locked.http() as http:
        api = http.get("/v1/runs", headers=header)
    login = log_in(locked, key)
    assert (api.status_code == 200) == (login.status_code == 303) == (key.strip() == "sekrit")
    assert login.status_code in (303, 401)
    assert (page(locked, headers=header).status_code == 200) == (api.status_code == 200)  # the bearer key works too


def test_a_login_post_that_is_not_the_form_is_refused(locked: Stack, clock: list[float]) -> None:
    with locked.http() as http:
        r = http.post(
            "/ui/login",
            content="&".join(f"f{i}=x" for i in range(50)),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert r.status_code == 400 and "set-cookie" not in r.headers
