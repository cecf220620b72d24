"""`readurls`: the readable text of the web pages a request links to, added to the conversation.

`pre` finds the http(s) URLs in the last user turn, fetches them concurrently and appends each
page's text to that turn, after the question. An HTML page is reduced to its main text by
trafilatura (the article, without navigation, sidebars, cookie banners and footers); when it finds
no main text, the page's whole visible text is used. Fetching is safe by
default:
- only `http` and `https`;
- the host name is resolved once and every address it resolves to must be public (no loopback,
  private, link-local, shared, multicast, reserved or cloud-metadata address); the connection then
  goes to the address that was checked (no second lookup, so no DNS-rebinding window), with the
  name kept for the Host header and TLS verification;
- redirects are followed by hand, at most 5, each hop checked the same way;
- at most `readurls_max_bytes` read and `readurls_timeout_s` per page (server settings); only
  text/html, text/plain and similar content types are read.
`--readurls-allow` (hosts, addresses or CIDR networks) lets an operator open an intranet.
A page that cannot be read is noted in the conversation and in the run's notes, never an error.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Sequence
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.spec import ApproachParams, PluginSpec
from optigraph.core.state import PluginState

_URL = re.compile(r"https?://[^\s<>\"'`)\]]+", re.IGNORECASE)
_TEXT_TYPES = ("text/html", "text/plain", "application/xhtml+xml", "text/markdown", "application/json")
_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "svg", "head"})
_BLOCK_TAGS = frozenset({"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article"})
MAX_REDIRECTS = 5


class ReadUrlsParams(ApproachParams):
    max_urls: int = Field(3, ge=1, le=10, description="URLs read per request (the first ones in the message).")
    max_chars: int = Field(8000, ge=100, le=200_000, description="Characters of each page's text added.")


class FetchRefused(Exception):
    """A URL that the safety rules do not allow, or that could not be read."""


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in _SKIP_TAGS:
            self.skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self.skipping:
            self.skipping -= 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_text(html: str) -> str:
    """The visible text of an HTML page, one block per line."""
    parser = _Text()
    parser.feed(html)
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def page_text(html: str) -> str:
    """The main text of an HTML page by trafilatura (it only parses, it fetches nothing), without the
    navigation, sidebars, banners and footers around it. When it finds no main text, or keeps every
    word anyway (a page with nothing around its text), the page's visible text (`html_text`) is used:
    same words, with inline markup kept on its line."""
    import trafilatura  # imported on first use: it takes a while and most servers never read a page

    visible = html_text(html)
    main = trafilatura.extract(html, include_comments=False, include_tables=True)
    if not main or len(main.split()) >= len(visible.split()):
        return visible
    return main


def find_urls(text: str, limit: int) -> list[str]:
    urls = [u.rstrip(".,;:!?") for u in _URL.findall(text)]
    return list(dict.fromkeys(urls))[:limit]


class Allowed:
    """The operator's allow-list: host names, addresses and networks."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.hosts = {e.lower() for e in entries if not _network(e)}
        self.networks = [n for n in (_network(e) for e in entries) if n is not None]

    def host(self, host: str) -> bool:
        return host.lower() in self.hosts

    def address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in n for n in self.networks if n.version == address.version)


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public(address.ipv4_mapped)
    return address.is_global and not address.is_multicast


async def resolve(host: str, port: int, allowed: Allowed) -> str:
    """The address to connect to for `host`: every address it resolves to must be allowed."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise FetchRefused(f"cannot resolve {host}: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise FetchRefused(f"{host} has no address")
    trusted = allowed.host(host)
    for address in addresses:
        if not (trusted or is_public(address) or allowed.address(address)):
            raise FetchRefused(f"{host} resolves to {address}, which is not a public address")
    return str(addresses[0])


async def fetch(client: httpx.AsyncClient, url: str, *, allowed: Allowed, max_bytes: int) -> str:
    """The text of the page at `url`, checked and fetched by the rules in the module docstring."""
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchRefused(f"{url}: only http and https URLs are read")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname
        address = await resolve(host, port, allowed)
        target = httpx.URL(url).copy_with(host=address)
        request = client.build_request(
            "GET", target, headers={"Host": parts.netloc.rpartition("@")[2]}, extensions={"sni_hostname": host}
        )
        response = await client.send(request, stream=True)
        try:
            if response.is_redirect:
                location = response.headers.get("location")
                if not location:
                    raise FetchRefused(f"{url}: redirect without a location")
                url = urljoin(url, location)
                continue
            if response.status_code >= 400:
                raise FetchRefused(f"{url}: HTTP {response.status_code}")
            kind = response.headers.get("content-type", "text/html").split(";")[0].strip().lower()
            if kind not in _TEXT_TYPES:
                raise FetchRefused(f"{url}: content type {kind} is not read")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FetchRefused(f"{url}: larger than {max_bytes} bytes")
        finally:
            await response.aclose()
        text = body.decode(response.encoding or "utf-8", errors="replace")
        # Parsing a large page is CPU work: off the event loop.
        return await asyncio.to_thread(page_text, text) if "html" in kind else text
    raise FetchRefused(f"{url}: more than {MAX_REDIRECTS} redirects")


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    params = state.get("params") or {}
    urls = find_urls(last_user_text(state["messages"]), int(params.get("max_urls", 3)))
    if not urls:
        return {"notes": ["readurls: no URL in the request"]}
    settings = runtime.context.settings
    allowed = Allowed(settings.readurls_allow if settings else ())
    max_bytes = settings.readurls_max_bytes if settings else 2_000_000
    timeout = settings.readurls_timeout_s if settings else 10.0
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        results = await asyncio.gather(*(_read(client, u, allowed, max_bytes, timeout) for u in urls))
    limit = int(params.get("max_chars", 8000))
    sections, notes = [], []
    for url, (text, error) in zip(urls, results):
        if error is not None:
            sections.append(f"[{url}: not read: {error}]")
            notes.append(f"readurls: {url} not read: {error}")
        else:
            sections.append(f"[Content of {url}]\n{text[:limit]}")
            notes.append(f"readurls: {url} read, {len(text)} characters")
    question = last_user_text(state["messages"])
    messages = replace_last_user(state["messages"], question + "\n\n" + "\n\n".join(sections))
    return {"messages": messages, "notes": notes}


async def _read(
    client: httpx.AsyncClient, url: str, allowed: Allowed, max_bytes: int, timeout: float
) -> tuple[str, str | None]:
    try:
        return await asyncio.wait_for(fetch(client, url, allowed=allowed, max_bytes=max_bytes), timeout), None
    except FetchRefused as exc:
        return "", str(exc).removeprefix(f"{url}: ")
    except (TimeoutError, httpx.HTTPError, UnicodeError) as exc:
        return "", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


SPEC = PluginSpec(
    name="readurls",
    description="Reads the web pages the request links to (public addresses only, by default) and adds "
    "their text to the conversation.",
    pre=pre,
    params=ReadUrlsParams,
    needs=frozenset({"network"}),
)
