"""Search providers for `web_search` and `deep_research`: one small protocol, three implementations.

- `web`: a search API the operator configures (`--search-url`), in SearXNG's JSON shape:
  `GET <url>?q=<query>&format=json` answering `{"results": [{"title", "url", "content"}]}`. Its key,
  when it needs one, comes from the environment variable `OPTIGRAPH_SEARCH_API_KEY_ENV` names (default
  `OPTIGRAPH_SEARCH_API_KEY`) and is sent as `Authorization: Bearer <key>`. The API is the operator's
  own choice and is called as configured; the pages its results link to are read by readurls' safe
  fetcher (public addresses only unless `--readurls-allow`).
- `folder`: the documents (.txt, .md, .markdown, .html, .htm) under `--search-folder`, cut into chunks
  and ranked by BM25 (plugins/retrieval.py); a result's text is its chunk, its URL `file:<path>`
  relative to the folder. Nothing outside the folder is read (symbolic links that leave it are skipped).
- `urls`: the http(s) URLs of the request itself, whatever the query (readurls' finder).

`provider_for` picks one by name (`auto`: web when configured, else the folder, else the request's URLs).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from optigraph.config import Settings
from optigraph.errors import InvalidRequest
from optigraph.plugins.readurls import Allowed, FetchRefused, fetch, find_urls, html_text
from optigraph.plugins.retrieval import BM25, split_chunks

FOLDER_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".html", ".htm"})
FOLDER_CHUNK_TOKENS = 300
FOLDER_MAX_FILES = 2000
FOLDER_MAX_BYTES = 2_000_000  # per file


@dataclass(frozen=True)
class SearchResult:
    """One hit: where it is, its title, a snippet, and its text when the provider already has it."""

    url: str
    title: str
    snippet: str
    text: str | None = None  # set by providers that read the document themselves (folder)


class SearchProvider(Protocol):
    """Something that answers a query with results."""

    name: str

    async def search(self, query: str, limit: int) -> list[SearchResult]: ...


class SearchFailed(Exception):
    """The provider could not answer (unreachable, an error status, a malformed answer)."""


class WebSearch:
    """A SearXNG-style JSON search API."""

    name = "web"

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 10.0) -> None:
        self.url = url
        self.api_key = api_key
        self.timeout_s = timeout_s

    async def search(self, query: str, limit: int) -> list[SearchResult]:
        headers = {"accept": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, trust_env=False) as client:
                response = await client.get(self.url, params={"q": query, "format": "json"}, headers=headers)
        except httpx.HTTPError as exc:
            raise SearchFailed(f"search API unreachable: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise SearchFailed(f"search API returned {response.status_code}")
        try:
            results = response.json().get("results")
        except (ValueError, AttributeError):
            raise SearchFailed("search API returned a body that is not a JSON object") from None
        if not isinstance(results, list):
            raise SearchFailed("search API returned no `results` list")
        out: list[SearchResult] = []
        for r in results:
            if isinstance(r, dict) and isinstance(r.get("url"), str) and r["url"].startswith(("http://", "https://")):
                out.append(
                    SearchResult(
                        url=r["url"], title=str(r.get("title") or r["url"]), snippet=str(r.get("content") or "")
                    )
                )
        return out[:limit]


class FolderSearch:
    """BM25 over the chunks of the documents in a folder (read when searched, off the event loop)."""

    name = "folder"

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()

    def _documents(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for path in sorted(self.folder.rglob("*")):
            if len(found) >= FOLDER_MAX_FILES:
                break
            try:
                real = path.resolve()
                if not real.is_file() or path.suffix.lower() not in FOLDER_SUFFIXES:
                    continue
                if not real.is_relative_to(self.folder) or real.stat().st_size > FOLDER_MAX_BYTES:
                    continue
                text = real.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if path.suffix.lower() in (".html", ".htm"):
                text = html_text(text)
            found.append((path.relative_to(self.folder).as_posix(), text))
        return found

    def _search(self, query: str, limit: int) -> list[SearchResult]:
        pieces: list[tuple[str, str, str]] = []  # (relative path, title, chunk text)
        for rel, text in self._documents():
            title = next((line.strip("# ").strip() for line in text.splitlines() if line.strip()), rel)
            pieces += [
                (rel, title, c.text) for c in split_chunks(text, chunk_tokens=FOLDER_CHUNK_TOKENS, overlap_tokens=30)
            ]
        if not pieces:
            return []
        index = BM25([p[2] for p in pieces])
        scores = index.scores(query)
        out: list[SearchResult] = []
        seen: set[str] = set()
        for i in index.rank(query):
            rel, title, text = pieces[i]
            if scores[i] <= 0 or rel in seen:
                continue
            seen.add(rel)  # one result per document: its best chunk
            out.append(SearchResult(url=f"file:{rel}", title=title, snippet=text[:300], text=text))
            if len(out) >= limit:
                break
        return out

    async def search(self, query: str, limit: int) -> list[SearchResult]:
        return await asyncio.to_thread(self._search, query, limit)


class RequestUrls:
    """The URLs the request itself names, for any query."""

    name = "urls"

    def __init__(self, text: str, limit: int = 10) -> None:
        self.urls = find_urls(text, limit)

    async def search(self, query: str, limit: int) -> list[SearchResult]:
        return [SearchResult(url=u, title=u, snippet="") for u in self.urls[:limit]]


PROVIDERS = ("auto", "web", "folder", "urls")


def provider_for(name: str, settings: Settings | None, request_text: str) -> SearchProvider:
    """The provider `name` on this server, or a 400 when the server has not configured it."""
    if name == "auto":
        if settings is not None and settings.search_url:
            name = "web"
        elif settings is not None and settings.search_folder is not None:
            name = "folder"
        else:
            name = "urls"
    if name == "web":
        if settings is None or not settings.search_url:
            raise InvalidRequest("the web search provider needs a search API (--search-url)", code="search_unavailable")
        key = os.environ.get(settings.search_api_key_env) or None
        return WebSearch(settings.search_url, api_key=key, timeout_s=settings.readurls_timeout_s)
    if name == "folder":
        if settings is None or settings.search_folder is None:
            raise InvalidRequest(
                "the folder search provider needs a document folder (--search-folder)", code="search_unavailable"
            )
        return FolderSearch(settings.search_folder)
    return RequestUrls(request_text)


async def read_pages(results: list[SearchResult], settings: Settings | None) -> list[tuple[str | None, str | None]]:
    """Each result's text (or the error that kept it from being read): a provider's own text as it is,
    a web page through readurls' safe fetcher under the server's allow-list and limits."""
    allowed = Allowed(settings.readurls_allow if settings else ())
    max_bytes = settings.readurls_max_bytes if settings else 2_000_000
    timeout = settings.readurls_timeout_s if settings else 10.0

    async def one(client: httpx.AsyncClient, result: SearchResult) -> tuple[str | None, str | None]:
        if result.text is not None:
            return result.text, None
        try:
            text = await asyncio.wait_for(fetch(client, result.url, allowed=allowed, max_bytes=max_bytes), timeout)
            return text, None
        except FetchRefused as exc:
            return None, str(exc).removeprefix(f"{result.url}: ")
        except (TimeoutError, httpx.HTTPError, UnicodeError) as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        return list(await asyncio.gather(*(one(client, r) for r in results)))
