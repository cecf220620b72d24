"""The compare page: `/ui/compare` sends one prompt through several approaches or expressions and
shows their answers side by side as they stream, each with its calls, tokens, time and run page.

The page is server-rendered like the rest of `/ui`; its one script is served from the package
(`/ui/assets/compare.js`, the only source the page's CSP allows). The script talks to
`POST /ui/api/chat/completions`, which is `/v1/chat/completions` behind the page's own login: the
session cookie (path `/ui`, SameSite=Strict) instead of a bearer key, so the key never reaches the
browser. Past comparisons are kept in the browser's localStorage, not on the server.
"""

from __future__ import annotations

from html import escape
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from optigraph.api import chat
from optigraph.api.access import ANONYMOUS, Caller, caller
from optigraph.api.errors import ORJSONResponse
from optigraph.api.ui import _guard, _logout_form, _page, _viewer

router = APIRouter(include_in_schema=False)

# The page's script comes from this server and may call it; nothing else is loaded or run.
COMPARE_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; base-uri 'none'"
)
SCRIPT = "compare.js"

COMPARE_CSS = """
form#compare-form textarea{width:100%;max-width:70em;min-height:5em;font:inherit}
fieldset{border:1px solid #dde;margin:.5em 0;max-width:70em}fieldset label{display:inline-block;margin:.1em .8em .1em 0}
#columns{display:flex;gap:.8em;align-items:stretch;overflow-x:auto;margin:.8em 0}
.column{flex:1 0 18em;max-width:40em;border:1px solid #ccd;padding:.5em;display:flex;flex-direction:column}
.column h3{margin:0 0 .3em;font-size:1em}.column pre.answer{flex:1 1 auto;min-height:4em}
.column dl{display:grid;grid-template-columns:max-content auto;gap:0 .8em;margin:.3em 0}.column dt{color:#666}
.column dd{margin:0;font-variant-numeric:tabular-nums}.column[data-state=streaming] h3::after{content:' ...'}
.column .column-error{color:#c62828}#history li{margin:.2em 0}#history button{margin-left:.5em}
"""


@router.get("/ui/compare", response_class=HTMLResponse)
async def compare_page(request: Request) -> Response:
    viewer, denied = await _guard(request)
    if denied is not None or viewer is None:
        return denied  # type: ignore[return-value]
    registry = request.app.state.registry
    boxes = "".join(
        f"<label title='{escape(spec.description or '')}'><input type='checkbox' name='approach' "
        f"value='{escape(name)}'> {escape(name)}</label>"
        for name, spec in sorted(registry.specs.items())
    )
    model = request.app.state.settings.default_model or ""
    body = (
        f"{_logout_form(request, viewer)}<p><a href='/ui'>&larr; runs</a></p><h1>Compare approaches</h1>"
        "<p>One prompt through several approaches or expressions, side by side as they stream.</p>"
        "<form id='compare-form'>"
        "<p><label for='prompt'>Prompt</label><br><textarea id='prompt' name='prompt' required></textarea></p>"
        f"<p><label>Model <input id='model' name='model' value='{escape(model)}' required></label></p>"
        f"<fieldset id='approaches'><legend>Approaches</legend>{boxes}</fieldset>"
        "<p><label>Expressions, one a line (e.g. <code>bon&amp;re2</code>, <code>moa|bon</code>)<br>"
        "<textarea id='expressions' name='expressions' rows='3'></textarea></label></p>"
        "<p><button id='run-compare' type='submit'>Compare</button> <span id='compare-note'></span></p></form>"
        "<div id='columns'></div>"
        "<h2>History</h2><p>Kept in this browser only. "
        "<button id='clear-history' type='button'>Clear</button></p><ol id='history'></ol>"
        f"<script src='/ui/assets/{SCRIPT}'></script>"
    )
    return _page("optigraph compare", body, csp=COMPARE_CSP, extra_css=COMPARE_CSS)


@router.get("/ui/assets/compare.js")
async def compare_script() -> Response:
    """The compare page's script, from the package (it holds no data, so it needs no login)."""
    text = resources.files("optigraph.api").joinpath("assets", SCRIPT).read_text(encoding="utf-8")
    return Response(
        text,
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@router.post("/ui/api/chat/completions")
async def ui_chat_completions(request: Request) -> Response:
    """`/v1/chat/completions` for the page: its session cookie (or the bearer key) instead of a key;
    the run is the viewer's (its tenant, its scopes), as it would be through the API."""
    viewer = await _viewer(request)
    if viewer is None:
        return ORJSONResponse(
            {
                "error": {
                    "message": "log in at /ui first: this endpoint takes the page's session",
                    "type": "authentication_error",
                    "param": None,
                    "code": "invalid_session",
                }
            },
            status_code=401,
        )
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        # a cross-site form cannot send JSON without asking first, which this server never allows
        return ORJSONResponse(
            {
                "error": {
                    "message": "send the body as application/json",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "unsupported_media_type",
                }
            },
            status_code=415,
        )
    # A logged-in viewer's session stands for its key, and nothing is forwarded; an open server, as the API.
    who = await caller(request) if viewer is ANONYMOUS else Caller(viewer, None)
    return await chat.chat_completions(request, who)
