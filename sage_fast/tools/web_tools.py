"""The web tools: search (``unified_web_search``) and the page reader (``parse_web_data``).

Search goes to Serper (Google results; key in ``SERPER_API_KEY``) or, with no key, to ``ddgs``.
The page reader fetches a URL the model chose, so it is guarded like any server-side fetch of
untrusted URLs: http(s) only, every hop of a redirect re-checked, and hosts that resolve to
loopback, private, link-local or otherwise non-global addresses refused unless allow-listed;
bodies are read up to a byte cap within a time-out and turned into text by html2text.
Remaining gap, stated plainly: a host could re-resolve between our check and httpx's connect
(DNS rebinding); pin resolution at the network layer (egress proxy/firewall) where that matters.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

from sage_fast.tools.context import ToolContext, ToolInputError

MAX_RESULTS = 10
MAX_CONTENT_LENGTH = 20000


@dataclass
class WebConfig:
    """Where search goes and how pages are fetched."""

    search_backend: Literal["auto", "serper", "ddgs"] = "auto"
    serper_url: str = "https://google.serper.dev"
    timeout_s: float = field(default=20.0, metadata={"help": "per request, search and page fetches alike"})
    max_page_bytes: int = field(default=3_000_000, metadata={"help": "bytes read from a page at most"})
    max_redirects: int = 5
    allow_hosts: tuple[str, ...] = field(default=(), metadata={"help": "hosts fetched even when not public"})
    user_agent: str = "sage-fast/0.1 (+https://github.com/allenai/SAGE)"


def check_public_url(url: str, allow_hosts: tuple[str, ...] = ()) -> str:
    """The URL if it is http(s) and its host resolves only to public addresses; else ToolInputError."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ToolInputError(f"website_url must be an http(s) URL, got {url!r}")
    host = parts.hostname
    if not host:
        raise ToolInputError(f"website_url {url!r} has no host")
    if host in allow_hosts:
        return url.strip()
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ToolInputError(f"website_url host {host!r} does not resolve ({exc})") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global or address.is_multicast:
            raise ToolInputError(f"website_url {url!r} points to a non-public address ({address}); only public "
                                 "web pages can be read")
    return url.strip()


def _title(html: str) -> str:
    match = re.search(r"<title[^>]*>(.*?)</title>", html, re.IGNORECASE | re.DOTALL)
    return " ".join(match.group(1).split()) if match else ""


class WebTools:
    """Binds the web tools to one configuration (keys are read from the environment per call and
    never appear in results)."""

    def __init__(self, config: WebConfig | None = None) -> None:
        self.config = config or WebConfig()
        self.cache_identity = f"web|{self.config.search_backend}|{self.config.max_page_bytes}"

    # -- search -------------------------------------------------------------------------------
    def _serper(self, query: str, kind: str, count: int, key: str) -> list[dict[str, str]]:
        import httpx

        endpoint = "images" if kind == "image" else "search"
        response = httpx.post(f"{self.config.serper_url.rstrip('/')}/{endpoint}", json={"q": query, "num": count},
                              headers={"X-API-KEY": key}, timeout=self.config.timeout_s)
        response.raise_for_status()
        data = response.json()
        rows = data.get("images" if kind == "image" else "organic", [])[:count]
        if kind == "image":
            return [{"title": r.get("title", ""), "link": r.get("imageUrl", ""), "snippet": r.get("link", "")}
                    for r in rows]
        return [{"title": r.get("title", ""), "link": r.get("link", ""), "snippet": r.get("snippet", "")} for r in rows]

    def _ddgs(self, query: str, kind: str, count: int) -> list[dict[str, str]]:
        try:
            from ddgs import DDGS
        except ImportError as exc:
            raise RuntimeError("web search needs SERPER_API_KEY or `pip install ddgs`") from exc
        client = DDGS(timeout=int(self.config.timeout_s))
        if kind == "image":
            return [{"title": r.get("title", ""), "link": r.get("image", ""), "snippet": r.get("url", "")}
                    for r in client.images(query, max_results=count)]
        return [{"title": r.get("title", ""), "link": r.get("href", ""), "snippet": r.get("body", "")}
                for r in client.text(query, max_results=count)]

    def unified_web_search(self, context: ToolContext, query: str, search_type: Literal["web", "image"] = "web",
                           num_results: int = 3) -> str:
        """Searches the web (or web images) and returns titles, links and snippets.

        Args:
            query: What to search for.
            search_type: "web" for pages, "image" for images.
            num_results: How many results, 1 to 10.
        """
        if not query.strip():
            raise ToolInputError("query is empty; say what to search for")
        if not 1 <= num_results <= MAX_RESULTS:
            raise ToolInputError(f"num_results must be between 1 and {MAX_RESULTS}, got {num_results}")
        key = os.environ.get("SERPER_API_KEY", "")
        backend = self.config.search_backend
        if backend == "serper" or (backend == "auto" and key):
            if not key:
                raise RuntimeError("search_backend 'serper' needs SERPER_API_KEY in the environment")
            rows = self._serper(query.strip(), search_type, num_results, key)
        else:
            rows = self._ddgs(query.strip(), search_type, num_results)
        if not rows:
            return f"No {search_type} results for {query.strip()!r}."
        lines = [f"{i}. {r['title']}\n   {r['link']}\n   {r['snippet']}" for i, r in enumerate(rows, start=1)]
        return f"{search_type.capitalize()} results for {query.strip()!r}:\n" + "\n".join(lines)

    # -- page reader --------------------------------------------------------------------------
    def _fetch(self, url: str) -> tuple[str, str, str]:
        """(final URL, content type, text) with every redirect hop re-checked."""
        import httpx

        headers = {"User-Agent": self.config.user_agent, "Accept": "text/html,text/plain;q=0.9,*/*;q=0.1"}
        with httpx.Client(follow_redirects=False, timeout=self.config.timeout_s, headers=headers) as client:
            for _ in range(self.config.max_redirects + 1):
                url = check_public_url(url, self.config.allow_hosts)
                with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    response.raise_for_status()
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        if len(body) >= self.config.max_page_bytes:
                            del body[self.config.max_page_bytes:]
                            break
                    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    return url, kind, body.decode(response.encoding or "utf-8", errors="replace")
        raise ToolInputError(f"website_url redirected more than {self.config.max_redirects} times")

    def parse_web_data(self, context: ToolContext, website_url: str, max_content_length: int = 5000) -> str:
        """Reads a public web page and returns its title and text.

        Args:
            website_url: The page's http(s) URL.
            max_content_length: Characters of text to return at most (up to 20000).
        """
        if not 1 <= max_content_length <= MAX_CONTENT_LENGTH:
            raise ToolInputError(f"max_content_length must be between 1 and {MAX_CONTENT_LENGTH}, got {max_content_length}")
        import httpx

        try:
            url, kind, body = self._fetch(website_url)
        except httpx.HTTPError as exc:
            return f"Could not read {website_url}: {type(exc).__name__}: {exc}"
        if kind in ("text/html", "application/xhtml+xml", ""):
            import html2text

            converter = html2text.HTML2Text()
            converter.ignore_images, converter.ignore_links, converter.body_width = True, True, 0
            title, text = _title(body), converter.handle(body)
        elif kind.startswith("text/") or kind in ("application/json", "application/xml"):
            title, text = "", body
        else:
            return f"Could not read {url}: content type {kind!r} is not text."
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        clipped = text[:max_content_length]
        more = f"\n[... {len(text) - len(clipped)} more characters]" if len(text) > len(clipped) else ""
        return f"Title: {title}\nURL: {url}\nContent:\n{clipped}{more}"


def web_tool_list(config: WebConfig | None = None) -> list[Any]:
    """The two bound tools, ready for ``Tool(...)``."""
    tools = WebTools(config)
    return [tools.unified_web_search, tools.parse_web_data]
