"""Local stand-ins for the network services sage_fast talks to (an OpenAI-compatible server, the
Gemini API), so the *real* clients (openai, google-genai) run in tests and benchmarks offline.

They are the only test doubles in the project and sit exactly at the network boundary. Each
answers from a script (``replies``), records every request, and can wait a modelled latency per
request (``latency_s``: a number, or a function of the request body) so benchmarks measure
sage_fast's own overhead against realistic model time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Latency = float | Callable[[dict[str, Any]], float]


def _wait(latency: Latency, body: dict[str, Any]) -> None:
    seconds = latency(body) if callable(latency) else latency
    if seconds > 0:
        time.sleep(seconds)


def local_http_server(handler: type) -> Any:
    """A threading HTTP server on a free local port. Its listen backlog is 256, not http.server's
    5: a rollout keeps dozens of requests in flight, and connections beyond the backlog have
    their SYN dropped and retried a second later, which shows up as made-up engine latency."""
    from http.server import ThreadingHTTPServer

    class Server(ThreadingHTTPServer):
        request_queue_size = 256
        daemon_threads = True

    return Server(("127.0.0.1", 0), handler)


def send_json(handler: Any, status: int, body: dict[str, Any]) -> None:
    """Writes one JSON response with its length (keep-alive clients need it)."""
    import json

    payload = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


class OpenAIStub:
    """A local OpenAI-compatible server: ``/v1/chat/completions`` and ``/v1/audio/transcriptions``.

    Chat requests consume ``faults`` first, one per request (``"500"``, ``"503"``, ``"400"``: that
    HTTP status; ``"drop"``: the connection is closed without a response), then ``replies`` in
    order, then get ``reply`` (a text, or a function of the request body) when it is set, else
    HTTP 500. Every request is kept, so the real ``openai`` client (and retries around it) is what
    tests exercise.
    """

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler

        self.replies: list[str] = []
        self.reply: str | Callable[[dict[str, Any]], str] | None = None
        self.faults: list[str] = []
        self.latency_s: Latency = 0.0
        self.transcriptions: list[dict] = []  # verbose_json bodies for /audio/transcriptions
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: dropped connections matter
            disable_nagle_algorithm = True  # headers and body leave at once (no delayed-ACK stalls)

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: dict) -> None:
                send_json(self, status, body)

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.endswith("/audio/transcriptions"):
                    with stub.lock:
                        stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                        stub.requests.append({"multipart": raw})
                        transcription = stub.transcriptions.pop(0)
                    self._send(200, transcription)
                    return
                body = json.loads(raw)
                with stub.lock:
                    stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                    stub.requests.append(body)
                _wait(stub.latency_s, body)  # before the reply is taken: a latency hook may script it
                with stub.lock:
                    fault = stub.faults.pop(0) if stub.faults else None
                    text = stub.replies.pop(0) if fault is None and stub.replies else None
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if text is None and fault is None and stub.reply is not None:
                    text = stub.reply(body) if callable(stub.reply) else stub.reply
                if fault is not None or text is None or not self.path.endswith("/chat/completions"):
                    status = int(fault) if fault is not None else 500
                    self._send(status, {"error": {"message": f"stub: {fault or 'no scripted reply'}"}})
                    return
                words = text.split()
                self._send(200, {
                    "id": f"stub-{len(stub.requests)}", "object": "chat.completion", "created": 0,
                    "model": body.get("model", "stub"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text},
                                 # when asked, one made-up log-probability per whitespace word
                                 "logprobs": {"content": [
                                     {"token": word, "logprob": -0.5 * (k + 1), "bytes": None, "top_logprobs": []}
                                     for k, word in enumerate(words)]} if body.get("logprobs") else None}],
                    "usage": {"prompt_tokens": 1000, "completion_tokens": len(words),
                              "total_tokens": 1000 + len(words)},
                })

        self._server = local_http_server(Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


class GeminiStub:
    """A local Gemini API server: answers ``POST /v1beta/models/{model}:generateContent`` with
    scripted texts (or scripted HTTP errors), keeping every request, so google-genai's real client
    is what the tests exercise.

    It also serves the Files API as the client drives it: the resumable upload (``POST
    /upload/{version}/files`` with ``X-Goog-Upload-Command: start`` answers an ``x-goog-upload-url``;
    the bytes follow in ``upload`` / ``upload, finalize`` chunks), ``GET /{version}/files/{id}`` (the
    state is ``PROCESSING`` for the first ``file_processing_polls`` reads of each file, then
    ``ACTIVE``, or ``file_final_state``) and ``DELETE /{version}/files/{id}``. Finished uploads are kept
    in ``uploads`` (name, mime_type, display_name, data); file reads and deletions in ``file_gets``
    and ``deleted``. Files API calls are not counted in ``requests`` / ``paths``, which stay the
    generateContent calls (and other JSON posts) as before.
    """

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler

        self.replies: list[str | int] = []  # an int is answered as that HTTP error status
        self.latency_s: Latency = 0.0
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.headers: list[dict] = []
        self.uploads: list[dict] = []  # finished uploads: name, mime_type, display_name, data
        self.file_gets: list[str] = []  # names read with GET /{version}/files/{id}
        self.deleted: list[str] = []  # names deleted
        self.file_processing_polls = 0  # reads of each new file that still answer PROCESSING
        self.file_final_state = "ACTIVE"  # the state after those reads ("FAILED" to test failures)
        self._sessions: dict[str, dict] = {}  # resumable uploads in progress, by upload id
        self._files: dict[str, dict] = {}  # uploaded files by name, with their remaining PROCESSING reads
        self._files_lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
                if not headers:
                    send_json(self, status, body)
                    return
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def _file_name(self) -> str | None:
                """``files/{id}`` for a Files API path, else None."""
                path = self.path.split("?")[0]
                marker = "/files/"
                if marker not in path or path.startswith("/upload/"):
                    return None
                return "files/" + path.split(marker, 1)[1]

            def do_GET(self) -> None:  # noqa: N802
                name = self._file_name()
                with stub._files_lock:
                    entry = stub._files.get(name) if name else None
                    if entry is not None:
                        stub.file_gets.append(name)
                        if entry["polls_left"] > 0:
                            entry["polls_left"] -= 1
                            state = "PROCESSING"
                        else:
                            state = stub.file_final_state
                        resource = {**entry["resource"], "state": state}
                if entry is None:
                    self._send(404, {"error": {"code": 404, "message": f"stub: no file {name}", "status": "NOT_FOUND"}})
                    return
                self._send(200, resource)

            def do_DELETE(self) -> None:  # noqa: N802
                name = self._file_name()
                with stub._files_lock:
                    found = name is not None and stub._files.pop(name, None) is not None
                    if found:
                        stub.deleted.append(name)
                if not found:
                    self._send(404, {"error": {"code": 404, "message": f"stub: no file {name}", "status": "NOT_FOUND"}})
                    return
                self._send(200, {})

            def _upload(self, raw: bytes) -> None:
                """One step of google-genai's resumable upload protocol."""
                command = self.headers.get("X-Goog-Upload-Command", "")
                query = dict(part.split("=", 1) for part in self.path.partition("?")[2].split("&") if "=" in part)
                if command == "start":
                    spec = (json.loads(raw) if raw else {}).get("file") or {}
                    spec = {_camel(k): v for k, v in spec.items()}  # the client sends snake_case
                    with stub._files_lock:
                        upload_id = str(len(stub._sessions) + 1)
                        version = self.path.split("?")[0].split("/")[2]  # /upload/{version}/files
                        stub._sessions[upload_id] = {"spec": spec, "data": b"", "version": version,
                                                     "mime_type": self.headers.get("X-Goog-Upload-Header-Content-Type",
                                                                                   spec.get("mimeType", ""))}
                    url = f"{stub.url}/upload/{version}/files?upload_id={upload_id}&upload_protocol=resumable"
                    self._send(200, {}, {"x-goog-upload-url": url, "x-goog-upload-status": "active"})
                    return
                with stub._files_lock:
                    session = stub._sessions.get(query.get("upload_id", ""))
                    if session is None:
                        self._send(404, {"error": {"code": 404, "message": "stub: no such upload", "status": "NOT_FOUND"}})
                        return
                    session["data"] += raw
                    if "finalize" not in command:
                        self._send(200, {}, {"x-goog-upload-status": "active"})
                        return
                    name = session["spec"].get("name") or f"files/stub{len(stub.uploads) + 1}"
                    resource = {"name": name, "displayName": session["spec"].get("displayName"),
                                "mimeType": session["mime_type"], "sizeBytes": str(len(session["data"])),
                                "uri": f"{stub.url}/{session['version']}/{name}", "state": "PROCESSING"}
                    resource = {k: v for k, v in resource.items() if v is not None}
                    stub._files[name] = {"resource": resource, "polls_left": stub.file_processing_polls}
                    stub.uploads.append({"name": name, "mime_type": session["mime_type"],
                                         "display_name": session["spec"].get("displayName"), "data": session["data"]})
                self._send(200, {"file": resource}, {"x-goog-upload-status": "final"})

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.startswith("/upload/"):
                    self._upload(raw)
                    return
                stub.paths.append(self.path)
                stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                stub.requests.append(json.loads(raw))
                _wait(stub.latency_s, stub.requests[-1])
                reply = stub.replies.pop(0) if stub.replies else 500
                if not self.path.split("?")[0].endswith(":generateContent") or isinstance(reply, int):
                    status = reply if isinstance(reply, int) else 404
                    self._send(status, {"error": {"code": status, "message": "stub error", "status": "UNAVAILABLE"}})
                    return
                self._send(200, {
                    "candidates": [{"content": {"role": "model", "parts": [{"text": reply}]},
                                    "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 1234, "candidatesTokenCount": len(reply.split()),
                                      "totalTokenCount": 1234 + len(reply.split())},
                    "modelVersion": "stub",
                })

        self._server = local_http_server(Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
