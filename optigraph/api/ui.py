"""The web page: `/ui` lists recent runs, `/ui/runs/{id}` shows one run (its graph with the path
taken, a timeline of its steps and upstream calls, its steps and its calls); `/ui/compare` is in
`ui_compare`.

Plain server-rendered HTML: every value is escaped with `html.escape`, the graph is drawn as an
inline SVG from the compiled graph's nodes and edges (`ui_graph`), the timeline as positioned bars
(`ui_waterfall`), and these pages load nothing else (no script, no external style, no font). When the server has an API key the page needs it too: the
login form posts it to `/ui/login`, which checks it as the API does and answers with a signed,
expiring session cookie (HttpOnly, SameSite=Strict, Secure over TLS; auth.UISessions). The key
itself is never stored in the browser, and never accepted in the address (a `?key=` is refused).
A viewer sees its own tenant's runs only (another tenant's run is a 404), and needs `runs:read`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from optigraph.api.access import ANONYMOUS, Access, Principal, bearer
from optigraph.api.auth import UISessions
from optigraph.api.scopes import RUNS_READ, allows
from optigraph.api.ui_graph import svg_graph
from optigraph.api.ui_waterfall import WATERFALL_CSS, render_waterfall
from optigraph.engine import inspection
from optigraph.errors import OptigraphError
from optigraph.memory.queries import get_run, page_runs
from optigraph.memory.records import RUN_STATUSES

router = APIRouter(include_in_schema=False)

COOKIE = "optigraph_session"
PAGE_SIZE = 50
STATUSES = RUN_STATUSES
# Nothing may be loaded or run: inline style and data: images only.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; base-uri 'none'"

CSS = (
    """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin:1.2em 0 .4em}
a{color:#2950b8}table{border-collapse:collapse;margin:.3em 0}
th,td{border:1px solid #ccd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#eef}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.runs-row:hover{background:#f6f6ff}
.status-completed{color:#18794e}.status-failed{color:#c62828}.status-running{color:#b26a00}
.status-cancelled,.status-interrupted{color:#6b6b6b}
pre{margin:.2em 0;white-space:pre-wrap;word-break:break-word;max-width:70em;background:#f7f7f9;padding:.4em}
details summary{cursor:pointer;color:#555}code{background:#f3f3f6;padding:0 .2em}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:.15em 1em}dl.summary dt{color:#666}
dl.summary dd{margin:0}.graph-frame{max-width:100%}
.graph svg{display:block;max-width:100%;height:auto;border:1px solid #dde}
.graph .node rect{fill:#f4f4f8;stroke:#99a;stroke-width:1}
.graph .node.taken rect{fill:#c9f0d5;stroke:#18794e;stroke-width:2.5}
.graph .node text{font:12px monospace;fill:#222}.graph .edge{stroke:#889;fill:none;stroke-width:1.2}
.graph .edge.conditional{stroke-dasharray:5 4}.graph .edge.taken{stroke:#18794e;stroke-width:2}
.legend span{display:inline-block;padding:0 .5em;margin-right:.5em;border:1px solid #99a}
.legend .taken{background:#c9f0d5;border-color:#18794e}
form.filters{margin:.5em 0}form.filters *{margin-right:.4em}form.logout{float:right}
"""
    + WATERFALL_CSS
)


# ---- auth ----------------------------------------------------------------------------------------


async def _viewer(request: Request) -> Principal | None:
    """Who is looking: a valid session cookie's caller, or the API's own bearer authentication.
    None when the server requires a key and the request has none that works."""
    access: Access = request.app.state.access
    if not await access.required():
        return ANONYMOUS
    sessions: UISessions = request.app.state.ui_sessions
    viewer = sessions.principal(request.cookies.get(COOKIE))
    if viewer is not None and (viewer.key_id is None or await access.key_id_active(viewer.key_id)):
        return viewer
    try:
        return (await access.authenticate(bearer(request))).principal
    except OptigraphError:
        return None


async def _guard(request: Request) -> tuple[Principal | None, Response | None]:
    """The viewer, or the response to send instead: a 400 for a key in the address (it would end up
    in histories and logs), the login form, or a 403 for a viewer without the runs:read scope."""
    if "key" in request.query_params:
        return None, _login(request, status=400, message="The API key is not accepted in the address: use this form.")
    viewer = await _viewer(request)
    if viewer is None:
        expired = COOKIE in request.cookies
        return None, _login(request, status=401, message="Your session has ended: log in again." if expired else "")
    if not allows(viewer.scopes, RUNS_READ):
        return None, _page(
            "optigraph: not allowed", f"<p>This key lacks the scope <code>{RUNS_READ}</code>.</p>", status=403
        )
    return viewer, None


def _login(request: Request, *, status: int, message: str = "", target: str | None = None) -> HTMLResponse:
    note = f"<p class='status-failed'>{escape(message)}</p>" if message else ""
    target = target or request.url.path
    body = (
        f"<h1>optigraph</h1><p>This server needs an API key to show runs.</p>{note}"
        "<form method='post' action='/ui/login'>"
        f"<input type='hidden' name='next' value='{escape(_safe_target(target))}'>"
        "<label>API key <input type='password' name='key' autocomplete='current-password' autofocus></label> "
        "<button>Log in</button></form>"
    )
    return _page("optigraph: API key", body, status=status)


def _safe_target(target: str) -> str:
    """Where to go after logging in: a page of this UI only (never another site)."""
    return target if target == "/ui" or (target.startswith("/ui/") and not target.startswith("/ui//")) else "/ui"


@router.post("/ui/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Checks the posted key as the API does; a right one gets a session cookie and goes on to `next`."""
    try:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:  # more fields than the form has
        return _login(request, status=400, message="That is not the login form.", target="/ui")
    key = (form.get("key") or [""])[0].strip()  # as the API's bearer token is (a pasted key often ends in a newline)
    target = _safe_target((form.get("next") or ["/ui"])[0])
    access: Access = request.app.state.access
    if not await access.required():
        return RedirectResponse(target, status_code=303)
    try:
        viewer = (await access.authenticate(key or None)).principal
    except OptigraphError:
        viewer = None
    if viewer is None or viewer is ANONYMOUS:
        return _login(request, status=401, message="That key is not valid.", target=target)
    sessions: UISessions = request.app.state.ui_sessions
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        sessions.issue(viewer),
        max_age=sessions.ttl_s,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/ui/logout", response_class=HTMLResponse)
async def logout(request: Request) -> Response:
    response = RedirectResponse("/ui", status_code=303)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


def _logout_form(request: Request, viewer: Principal) -> str:
    if viewer is ANONYMOUS:
        return ""
    return "<form class='logout' method='post' action='/ui/logout'><button>Log out</button></form>"


# ---- pages ---------------------------------------------------------------------------------------


def _page(title: str, body: str, *, status: int = 200, csp: str = CSP, extra_css: str = "") -> HTMLResponse:
    text = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{CSS}{extra_css}</style></head>"
        f"<body>{body}</body></html>"
    )
    return HTMLResponse(
        text,
        status_code=status,
        headers={"Content-Security-Policy": csp, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/ui", response_class=HTMLResponse)
async def runs_page(
    request: Request,
    status: Annotated[str | None, Query()] = None,
    approach: Annotated[str | None, Query()] = None,
    after: Annotated[str | None, Query()] = None,
) -> Response:
    viewer, denied = await _guard(request)
    if denied is not None or viewer is None:
        return denied  # type: ignore[return-value]
    status = status or None
    approach = (approach or "").strip() or None
    page = await page_runs(
        request.app.state.db,
        status=status,
        expression=inspection.canonical(approach),
        after=after or None,
        limit=PAGE_SIZE,
        tenant=viewer.tenant,
    )
    runs = inspection.run_list(page.runs, has_more=page.has_more)
    options = "".join(f"<option value='{s}'{' selected' if s == status else ''}>{s}</option>" for s in STATUSES)
    filters = (
        "<form class='filters' method='get' action='/ui'>"
        f"<label>Status <select name='status'><option value=''>any</option>{options}</select></label>"
        f"<label>Approach <input name='approach' value='{escape(approach or '')}' "
        "placeholder='e.g. bon&amp;re2'></label><button>Filter</button> <a href='/ui'>clear</a></form>"
    )
    rows = []
    for r in runs["data"]:
        href = f"/ui/runs/{escape(r['id'])}"
        rows.append(
            f"<tr class='runs-row' data-run-id='{escape(r['id'])}'>"
            f"<td><a class='run-link' href='{href}'><code>{escape(r['id'])}</code></a></td>"
            f"<td class='status status-{escape(r['status'])}'>{escape(r['status'])}</td>"
            f"<td><code>{escape(r['expression'])}</code></td><td>{escape(r['model'])}</td>"
            f"<td class='num'>{r['usage']['calls']}</td><td class='num'>{r['usage']['total_tokens']}</td>"
            f"<td class='num'>{_ms(r.get('latency_ms'))}</td><td>{escape(_when(r.get('created_at')))}</td></tr>"
        )
    table = (
        (
            "<table id='runs'><thead><tr><th>Run</th><th>Status</th><th>Approach</th><th>Model</th>"
            "<th>Calls</th><th>Tokens</th><th>Latency</th><th>Created</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
        if rows
        else "<p id='no-runs'>No runs.</p>"
    )
    more = ""
    if runs["has_more"] and runs["next_cursor"]:
        query = {k: v for k, v in (("status", status), ("approach", approach)) if v}
        query["after"] = runs["next_cursor"]
        more = f"<p><a id='older' href='/ui?{escape(urlencode(query))}'>Older runs</a></p>"
    body = (
        f"{_logout_form(request, viewer)}<h1>optigraph runs</h1>"
        f"<p>Newest first. <a id='compare-link' href='/ui/compare'>Compare approaches</a></p>{filters}{table}{more}"
    )
    return _page("optigraph runs", body)


@router.get("/ui/runs/{run_id}", response_class=HTMLResponse)
async def run_page(request: Request, run_id: str) -> Response:
    viewer, denied = await _guard(request)
    if denied is not None or viewer is None:
        return denied  # type: ignore[return-value]
    row = await get_run(request.app.state.db, run_id, tenant=viewer.tenant)  # another tenant's: no such run
    if row is None:
        return _page(
            "optigraph: no such run",
            f"<p><a href='/ui'>&larr; runs</a></p><h1>No run with id <code>{escape(run_id)}</code></h1>",
            status=404,
        )
    compiler = request.app.state.runner.compiler
    detail = await inspection.run_detail(row, compiler)
    return _page(f"optigraph run {run_id}", _logout_form(request, viewer) + render_run(detail, compiler))


# ---- one run -------------------------------------------------------------------------------------


def render_run(detail: Mapping[str, Any], compiler: Any) -> str:
    usage = detail["usage"]
    totals = detail["totals"]
    parent = detail.get("parent_id")
    items = [
        (
            "Status",
            f"<span id='run-status' class='status-{escape(detail['status'])}'>{escape(detail['status'])}</span>",
        ),
        ("Approach", f"<code id='run-approach'>{escape(detail['expression'])}</code>"),
        ("Model", escape(detail["model"])),
        ("Created", escape(_when(detail.get("created_at")))),
        ("Finished", escape(_when(detail.get("finished_at")))),
        ("Latency", _ms(detail.get("latency_ms"))),
        ("Upstream calls", f"{totals['calls']} ({totals['failed_calls']} failed, {totals['retried_calls']} retried)"),
        (
            "Tokens",
            (
                f"{usage['total_tokens']} (prompt {usage['prompt_tokens']}, completion "
                f"{usage['completion_tokens']}, reasoning {usage['reasoning_tokens']})"
            ),
        ),
        ("Steps", f"{totals['steps']} steps, {totals['tasks']} tasks"),
    ]
    if parent:
        items.insert(0, ("Forked from", f"<a href='/ui/runs/{escape(parent)}'><code>{escape(parent)}</code></a>"))
    if detail.get("error"):
        items.append(("Error", f"<pre id='run-error'>{_json(detail['error'])}</pre>"))
    summary = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    io = (
        f"<details><summary>Request</summary><pre id='run-request'>{_json(detail.get('request'))}</pre></details>"
        f"<details><summary>Response</summary><pre id='run-response'>{_json(detail.get('response'))}</pre></details>"
    )
    return (
        f"<p><a href='/ui'>&larr; runs</a></p><h1>Run <code id='run-id'>{escape(detail['id'])}</code></h1>"
        f"<dl class='summary'>{summary}</dl>{io}"
        f"<h2>Graph</h2>{render_graph(detail, compiler)}"
        f"<h2>Timeline</h2>{render_waterfall(detail)}"
        f"<h2>Steps</h2>{render_steps(detail)}"
        f"<h2>Upstream calls</h2>{render_calls(detail.get('upstream_calls') or [])}"
    )


def taken_nodes(detail: Mapping[str, Any]) -> set[str]:
    """The ids of the drawn graph's nodes (`get_graph(xray=True)`) that ran: each task, its name
    prefixed by the tasks that ran the child graphs it is in (`2.none+bon:bon:rate`)."""
    taken: set[str] = set()

    def walk(steps: list[Mapping[str, Any]], prefix: str) -> None:
        for step in steps:
            for task in step.get("tasks") or ():
                taken.add(prefix + task["name"])
                if task.get("steps"):
                    walk(task["steps"], f"{prefix}{task['name']}:")

    threads = detail.get("threads") or []
    for thread in threads:
        walk(thread.get("steps") or [], "")
    if not threads:  # not checkpointed (a lone approach without steps): its calls say what ran
        taken.update(c["node"] for c in detail.get("upstream_calls") or ())
        if taken:
            taken.add("__start__")
    if detail.get("status") == "completed" and all(not t.get("next") for t in threads):
        taken.add("__end__")
    return taken


def render_graph(detail: Mapping[str, Any], compiler: Any) -> str:
    graph = detail.get("graph") or {}
    if graph.get("error"):
        return f"<p id='graph-error'>The graph cannot be drawn: {escape(graph['error'])}</p>"
    try:
        drawn = inspection.compile_expression(detail["expression"], compiler).graph.get_graph(xray=True)
    except OptigraphError as exc:
        return f"<p id='graph-error'>The graph cannot be drawn: {escape(exc.message)}</p>"
    nodes = list(drawn.nodes)
    edges = [(e.source, e.target, bool(e.conditional)) for e in drawn.edges]
    svg = svg_graph(nodes, edges, taken_nodes(detail))
    mermaid = graph.get("mermaid") or ""
    return (
        "<div class='graph'><p class='legend'><span class='taken'>ran in this run</span>"
        "<span>did not run</span> dashed arrows: conditional or fan-out</p>"
        f"<div class='graph-frame' id='graph-frame'>{svg}</div>"
        f"<details><summary>Mermaid text</summary><pre id='mermaid'>{escape(mermaid)}</pre></details></div>"
    )


def render_steps(detail: Mapping[str, Any]) -> str:
    threads = detail.get("threads") or []
    if not threads:
        return "<p id='no-steps'>This run was not checkpointed, so it has no steps (its calls are below).</p>"
    many = len(threads) > 1
    rows = []
    for thread in threads:
        if thread.get("error"):
            rows.append(f"<tr><td colspan='7'>{escape(thread['thread_id'])}: {escape(thread['error'])}</td></tr>")
        for depth, step, task in inspection.iter_steps(thread.get("steps") or []):
            ns = step.get("checkpoint_ns") or ""
            graph = ns.split(":", 1)[0] if ns else ""
            writes = task.get("writes")
            cell = (
                (
                    f"<details><summary>{len(writes) if isinstance(writes, Mapping) else ''} "
                    f"{escape(', '.join(writes) if isinstance(writes, Mapping) else 'value')}</summary>"
                    f"<pre class='writes'>{_json(writes)}</pre></details>"
                )
                if writes is not None
                else ""
            )
            if task.get("error"):
                cell += f"<pre class='task-error'>{escape(str(task['error']))}</pre>"
            indent = "&nbsp;&nbsp;" * depth + ("&#8627; " if depth else "")
            rows.append(
                f"<tr class='step-row' data-task='{escape(task['name'])}' data-depth='{depth}'>"
                + (f"<td>{escape(thread['thread_id'])}</td>" if many else "")
                + f"<td class='num'>{step.get('step')}</td><td>{escape(graph)}</td>"
                f"<td class='task-name'>{indent}{escape(task['name'])}</td><td>{escape(task.get('kind') or '')}</td>"
                f"<td class='status-{escape(task.get('status') or '')}'>{escape(task.get('status') or '')}</td>"
                f"<td>{cell}</td></tr>"
            )
    head = ("<th>Thread</th>" if many else "") + (
        "<th>Step</th><th>Graph</th><th>Task</th><th>Kind</th><th>Status</th><th>Writes</th>"
    )
    return (
        render_decisions(threads)
        + f"<table id='steps'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def render_decisions(threads: list[Mapping[str, Any]]) -> str:
    """What plugins chose while the run ran (a router's route), one line each."""
    items = [
        f"<li class='decision'>{escape(t['thread_id'])}: <code>{escape(d.get('plugin', ''))}</code> chose "
        f"<code>{escape(d.get('route', ''))}</code>" + (f": {escape(d['reason'])}" if d.get("reason") else "") + "</li>"
        for t in threads
        for d in t.get("decisions") or []
    ]
    return f"<h3>Decisions</h3><ul id='decisions'>{''.join(items)}</ul>" if items else ""


def render_calls(calls: list[Mapping[str, Any]]) -> str:
    if not calls:
        return "<p id='no-calls'>No upstream calls.</p>"
    rows = []
    for i, c in enumerate(calls, 1):
        answers = [ch.get("text") if isinstance(ch, Mapping) and "text" in ch else ch for ch in c.get("choices") or []]
        answer = "\n---\n".join(
            a if isinstance(a, str) else json.dumps(a, indent=2, ensure_ascii=False) for a in answers
        )
        u = c["usage"]
        error = f"<pre class='call-error'>{escape(str(c['error']))}</pre>" if c.get("error") else ""
        rows.append(
            f"<tr class='call-row' data-node='{escape(c['node'])}'><td class='num'>{i}</td>"
            f"<td>{escape(c['node'])}</td><td>{escape(c['model'])}<br><small>{escape(c['backend'])}</small></td>"
            f"<td class='num'>{c['attempt']}</td><td class='call-status status-{escape(c['status'])}'>"
            f"{escape(c['status'])}{error}</td>"
            f"<td class='num'>{u['prompt_tokens']} / {u['completion_tokens']} / {u['total_tokens']}</td>"
            f"<td class='num'>{_ms(c.get('latency_ms'))}</td>"
            f"<td><details><summary>{len(c.get('messages') or [])} messages</summary>"
            f"<pre class='messages'>{_messages(c.get('messages') or [])}</pre></details></td>"
            f"<td><details><summary>{escape(_preview(answer))}</summary>"
            f"<pre class='answer'>{escape(answer)}</pre></details></td></tr>"
        )
    return (
        "<table id='calls'><thead><tr><th>#</th><th>Node</th><th>Model</th><th>Attempt</th><th>Status</th>"
        "<th>Tokens (prompt / completion / total)</th><th>Latency</th><th>Messages</th><th>Answer</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


# ---- formatting ----------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return escape(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _messages(messages: list[Any]) -> str:
    out = []
    for m in messages:
        if isinstance(m, Mapping) and isinstance(m.get("content"), str):
            out.append(f"[{m.get('role', '?')}]\n{m['content']}")
        else:
            out.append(json.dumps(m, indent=2, ensure_ascii=False, default=str))
    return escape("\n\n".join(out))


def _preview(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


def _ms(value: Any) -> str:
    return f"{float(value):.0f} ms" if isinstance(value, (int, float)) else ""


def _when(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    return value.replace("T", " ")[:19]
