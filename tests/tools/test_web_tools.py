"""Web tools: Serper search through a local stub, and a page reader that refuses every non-public
address, on every redirect hop, before any request leaves (all traffic here stays on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("html2text")

from sage_fast.tools.context import ToolContext, ToolInputError  # noqa: E402
from sage_fast.tools.schema import function_schema  # noqa: E402
from sage_fast.tools.web_tools import WebConfig, WebTools, check_public_url  # noqa: E402

PAGES = {
    "/article": ("text/html", "<html><head><title>Match report</title></head><body><h1>Final</h1>"
                 "<p>Team A won <b>3-1</b>.</p><script>var x=1;</script>" + "<p>filler</p>" * 50 + "</body></html>"),
    "/plain": ("text/plain", "just text"),
    "/image": ("image/png", "\x89PNG"),
}


class Site:
    """A local web site and search API; records every path requested."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.redirect_to = ""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, kind: str, body: str, headers: dict[str, str] | None = None) -> None:
                data = body.encode("latin-1")
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                site.seen.append(self.path)
                if self.path == "/redirect":
                    self._send(302, "text/plain", "", {"Location": site.redirect_to})
                elif self.path in PAGES:
                    self._send(200, *PAGES[self.path])
                else:
                    self._send(404, "text/plain", "missing")

            def do_POST(self) -> None:  # noqa: N802
                site.seen.append(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("X-API-KEY") != "serper-secret":
                    self._send(403, "application/json", "{}")
                    return
                rows = [{"title": f"{body['q']} {i}", "link": f"https://example.com/{i}", "snippet": f"s{i}",
                         "imageUrl": f"https://img.example.com/{i}.jpg"} for i in range(body["num"])]
                key = "images" if self.path == "/images" else "organic"
                self._send(200, "application/json", json.dumps({key: rows}))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture
def context(tmp_path: Path) -> ToolContext:
    return ToolContext(video_path=tmp_path / "v.mp4", work_dir=tmp_path / "w")  # web tools never open the video


def test_serper_search(site: Site, context: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERPER_API_KEY", "serper-secret")
    tools = WebTools(WebConfig(serper_url=site.base))
    result = tools.unified_web_search(context, "world cup final", num_results=2)
    assert result.splitlines() == ["Web results for 'world cup final':", "1. world cup final 0",
                                   "   https://example.com/0", "   s0", "2. world cup final 1",
                                   "   https://example.com/1", "   s1"]
    images = tools.unified_web_search(context, "trophy", search_type="image", num_results=1)
    assert "https://img.example.com/0.jpg" in images and site.seen == ["/search", "/images"]
    assert "serper-secret" not in result + images
    with pytest.raises(ToolInputError, match="between 1 and 10"):
        tools.unified_web_search(context, "x", num_results=11)


def test_schemas(context: ToolContext) -> None:
    tools = WebTools()
    search = function_schema(tools.unified_web_search)["function"]["parameters"]["properties"]
    assert search["search_type"]["enum"] == ["web", "image"] and search["num_results"]["default"] == 3
    reader = function_schema(tools.parse_web_data)["function"]["parameters"]
    assert reader["required"] == ["website_url"] and reader["properties"]["max_content_length"]["default"] == 5000


def test_page_reader_text_title_and_cap(site: Site, context: ToolContext) -> None:
    tools = WebTools(WebConfig(allow_hosts=("127.0.0.1",)))
    result = tools.parse_web_data(context, f"{site.base}/article", max_content_length=40)
    lines = result.splitlines()
    assert lines[0] == "Title: Match report" and lines[1] == f"URL: {site.base}/article"
    assert "Team A won **3-1**" in result or "Team A won" in result
    assert "var x" not in result and "more characters]" in result
    assert tools.parse_web_data(context, f"{site.base}/plain").endswith("just text")
    assert "is not text" in tools.parse_web_data(context, f"{site.base}/image")
    assert "404" in tools.parse_web_data(context, f"{site.base}/nope")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "http://127.0.0.1:1/",
                                 "http://localhost/", "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data",
                                 "http://[::1]/", "http://0.0.0.0/", "http:///nohost"])
def test_non_public_urls_are_refused_without_a_request(url: str, context: ToolContext) -> None:
    with pytest.raises(ToolInputError):
        WebTools().parse_web_data(context, url)
    with pytest.raises(ToolInputError):
        check_public_url(url)


def test_redirects_are_checked_hop_by_hop(site: Site, context: ToolContext) -> None:
    tools = WebTools(WebConfig(allow_hosts=("127.0.0.1",)))
    site.redirect_to = "http://169.254.169.254/latest/meta-data"
    with pytest.raises(ToolInputError, match="non-public"):
        tools.parse_web_data(context, f"{site.base}/redirect")
    site.redirect_to = "/plain"  # a relative redirect on the same (allowed) host is followed
    assert tools.parse_web_data(context, f"{site.base}/redirect").endswith("just text")
    assert site.seen == ["/redirect", "/redirect", "/plain"]
