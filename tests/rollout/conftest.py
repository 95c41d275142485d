"""Fixtures for the rollout tests: the OpenAI-compatible stub set to fail on purpose, a tiny model."""

from __future__ import annotations

import pytest

from sage_fast.testing import OpenAIStub


def faulty_server() -> OpenAIStub:
    """The OpenAI-compatible stub answering every request with ``reply`` after its ``faults``."""
    server = OpenAIStub()
    server.reply = '<json>{"final_answer": "ok"}</json>'
    return server


@pytest.fixture
def faulty_openai():  # noqa: ANN201
    server = faulty_server()
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
    servers: list[OpenAIStub] = []

    def make() -> OpenAIStub:
        servers.append(faulty_server())
        return servers[-1]

    yield make
    for server in servers:
        server.close()
