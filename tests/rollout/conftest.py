"""Fixtures for the rollout tests: an OpenAI-compatible stub server that can fail on purpose."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FaultyOpenAIServer:
    """Answers /v1/chat/completions; ``faults`` is consumed one per request: ``"500"`` / ``"503"``
    (error status), ``"drop"`` (closes the connection without a response), ``"400"`` (a client
    error no retry can fix); after that, every request gets ``reply`` (a string, or a function of
    the request body). Requests are kept, so the
    real ``openai`` client (and our retries) is what the tests exercise."""

    def __init__(self) -> None:
        self.faults: list[str] = []
        self.reply = '<json>{"final_answer": "ok"}</json>'
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    fault = server.faults.pop(0) if server.faults else None
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault is not None:
                    payload = json.dumps({"error": {"message": f"injected {fault}"}}).encode()
                    self.send_response(int(fault))
                else:
                    text = server.reply(body) if callable(server.reply) else server.reply
                    payload = json.dumps({
                        "id": f"stub-{len(server.requests)}", "object": "chat.completion", "created": 0,
                        "model": body.get("model", "stub"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107},
                    }).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def faulty_openai():  # noqa: ANN201
    server = FaultyOpenAIServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A tiny random-weight Qwen2.5-VL checkpoint, built once per session."""
    from sage_fast.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", "qwen2_5_vl", seed=0)


@pytest.fixture
def make_faulty_openai():  # noqa: ANN201
    """``make_faulty_openai()`` -> another server (for one endpoint per worker); all closed at teardown."""
    servers: list[FaultyOpenAIServer] = []

    def make() -> FaultyOpenAIServer:
        servers.append(FaultyOpenAIServer())
        return servers[-1]

    yield make
    for server in servers:
        server.close()
