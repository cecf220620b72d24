"""readurls: pages fetched over real HTTP on loopback (allow-listed), and the addresses it refuses."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from engine_stack import ask, make_runner
from scripted import ScriptedBackend
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from upstream import ServerThread

from optigraph.plugins.readurls import (
    Allowed,
    FetchRefused,
    fetch,
    find_urls,
    html_text,
    page_text,
)

PAGE = """<html><head><title>t</title><style>p {color: red}</style><script>var secret = 1;</script></head>
<body><h1>Opening hours</h1><p>The museum opens at <b>9:30</b> on Sundays.</p></body></html>"""


# A news page as sites serve them: the article among navigation, a cookie banner, a sidebar, a footer.
ARTICLE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Night trains return to the Alps | Rail Weekly</title>
<script>window.dataLayer = [];</script><style>.nav{display:flex}</style></head>
<body>
<header><nav class="menu"><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li>
<li><a href="/about">About us</a></li><li><a href="/subscribe">Subscribe</a></li></ul></nav></header>
<div class="cookie-banner">We use cookies to improve your experience. Accept all cookies.</div>
<aside class="sidebar"><h3>Most read</h3><ul><li><a href="/a">Ten cheapest fares this winter</a></li>
<li><a href="/b">Why your train is late</a></li></ul></aside>
<main><article>
<h1>Night trains return to the Alps</h1>
<p>The operator announced on Tuesday that a new night train will link Zurich and Vienna three times a week
from March, with sleeper cabins and a dining car that serves regional dishes.</p>
<p>Tickets go on sale in January. A couchette costs 79 euros one way, and a private sleeper cabin for two
costs 240 euros, breakfast included.</p>
<p>The company expects the service to be full on most nights during the ski season, and plans to add a
fourth weekly departure if demand stays high through the spring.</p>
</article></main>
<footer><p>Copyright 2026 Rail Weekly. All rights reserved.</p><ul><li><a href="/privacy">Privacy policy</a></li>
<li><a href="/terms">Terms of use</a></li><li><a href="/contact">Contact</a></li></ul></footer>
</body></html>"""


def site() -> Starlette:
    async def page(request):  # noqa: ANN001
        return Response(PAGE, media_type="text/html")

    async def to_metadata(request):  # noqa: ANN001
        return RedirectResponse("http://169.254.169.254/latest/meta-data/")

    async def to_local(request):  # noqa: ANN001
        return RedirectResponse("http://10.0.0.1/admin")

    async def binary(request):  # noqa: ANN001
        return Response(b"\x00" * 10, media_type="application/octet-stream")

    async def big(request):  # noqa: ANN001
        return PlainTextResponse("x" * 50_000)

    async def article(request):  # noqa: ANN001
        return Response(ARTICLE, media_type="text/html; charset=utf-8")

    return Starlette(
        routes=[
            Route("/page", page),
            Route("/meta", to_metadata),
            Route("/local", to_local),
            Route("/bin", binary),
            Route("/big", big),
            Route("/article", article),
        ]
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(site()) as s:
        yield s


def test_html_is_reduced_to_its_visible_text() -> None:
    assert (
        html_text(PAGE) == "t\nOpening hours\nThe museum opens at 9:30 on Sundays."
        or html_text(PAGE) == "Opening hours\nThe museum opens at 9:30 on Sundays."
    )
    assert "secret" not in html_text(PAGE) and "color" not in html_text(PAGE)


async def test_a_page_is_reduced_to_its_article(server: ServerThread) -> None:
    async with httpx.AsyncClient() as client:
        text = await fetch(client, f"{server.url}/article", allowed=Allowed(["127.0.0.1"]), max_bytes=100_000)
    assert "A couchette costs 79 euros one way" in text
    assert "fourth weekly departure if demand stays high" in text
    for boilerplate in (
        "About us",
        "Subscribe",
        "cookies",
        "Most read",
        "Ten cheapest fares",
        "All rights reserved",
        "Privacy policy",
        "dataLayer",
        "display:flex",
    ):
        assert boilerplate not in text, boilerplate
    assert "Home" not in text.split()


def test_extraction_fetches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extractor only parses the page it is given (no look-ups of links, suffix lists or feeds)."""
    import socket

    lookups: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: lookups.append(host) or [])
    assert "A couchette costs 79 euros one way" in page_text(ARTICLE)
    assert lookups == []


def test_a_page_without_a_main_text_keeps_its_visible_text() -> None:
    """Where the extractor finds nothing it would call content, the stdlib reduction is used."""
    page = "<html><body><nav><a href='/a'>Alpha</a> <a href='/b'>Beta</a></nav><script>x=1</script></body></html>"
    assert page_text(page) == html_text(page) == "Alpha Beta"


def test_urls_are_found_once_in_order_without_trailing_punctuation() -> None:
    text = "See https://a.example/x, and http://b.example/y. Again https://a.example/x!"
    assert find_urls(text, 5) == ["https://a.example/x", "http://b.example/y"]
    assert find_urls(text, 1) == ["https://a.example/x"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://localhost/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "file:///etc/passwd",
        "ftp://example.com/x",
    ],
)
async def test_non_public_addresses_and_other_schemes_are_refused(url: str) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(FetchRefused):
            await fetch(client, url, allowed=Allowed([]), max_bytes=1000)


async def test_an_allow_listed_loopback_page_is_read(server: ServerThread) -> None:
    async with httpx.AsyncClient() as client:
        text = await fetch(client, f"{server.url}/page", allowed=Allowed(["127.0.0.1/32"]), max_bytes=10_000)
    assert "The museum opens at 9:30 on Sundays." in text


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/meta", "169.254.169.254"),  # a redirect into the metadata address is checked like the first hop
        ("/local", "10.0.0.1"),  # into a private network
        ("/bin", "content type"),
        ("/big", "larger than"),
    ],
)
async def test_each_hop_and_each_limit_is_enforced(server: ServerThread, path: str, why: str) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(FetchRefused, match=why):
            await fetch(client, f"{server.url}{path}", allowed=Allowed(["127.0.0.1"]), max_bytes=10_000)


async def test_localhost_is_refused_by_name_even_when_its_address_is_allowed(server: ServerThread) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(FetchRefused, match="not a public address"):
            await fetch(
                client,
                f"http://localhost:{server.url.rsplit(':', 1)[1]}/page",
                allowed=Allowed(["10.0.0.0/8"]),
                max_bytes=1000,
            )


async def test_the_page_text_reaches_the_model_after_the_question(server: ServerThread) -> None:
    backend = ScriptedBackend(lambda body: "It opens at 9:30.")
    runner = make_runner(backend, readurls_allow=["127.0.0.1"])
    question = f"When does the museum open on Sundays? {server.url}/page"
    response = await ask(
        runner,
        {
            "model": "readurls&none-m",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        },
    )
    sent = backend.calls[0]["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[1]["content"].startswith(question)
    assert "The museum opens at 9:30 on Sundays." in sent[1]["content"]
    assert response["choices"][0]["message"]["content"] == "It opens at 9:30."


async def test_without_the_allow_list_the_page_is_not_read_and_the_model_is_told(server: ServerThread) -> None:
    backend = ScriptedBackend(lambda body: "ok")
    await ask(
        make_runner(backend),
        {"model": "readurls&none-m", "messages": [{"role": "user", "content": f"Summarise {server.url}/page"}]},
    )
    sent = backend.calls[0]["messages"][0]["content"]
    assert "museum" not in sent
    assert "not read" in sent and "not a public address" in sent
