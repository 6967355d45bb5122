"""The vLLM code path against a real OpenAI-compatible server: llama-cpp-python's server
running the packaged model, started by the test on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from featurelm.engine import Engine
from featurelm.engine.backends.local import packaged_model_path
from featurelm.engine.errors import BackendError
from featurelm.engine.schemas import violations
from tests.conftest import SENTIMENT, ProjectFactory, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    # The server logs a lot while loading; a file, unlike a pipe, never fills up and blocks it.
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(packaged_model_path()),
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
             "--model_alias", "gemma-3-270m"],
            stdout=sink, stderr=subprocess.STDOUT, env={**os.environ})
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base_url}/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            raise RuntimeError("llama.cpp server did not start within 120 s")
        yield base_url
    finally:
        process.terminate()
        process.wait(10)


def server_backend(base_url: str, dialect: str) -> dict[str, object]:
    return {"kind": "openai", "model": "gemma-3-270m", "structured": dialect,
            "options": {"base_urls": [base_url], "read_timeout": 120}}


async def test_a_feature_runs_through_the_llama_cpp_server(
        llama_server: str, make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project(
        backends={"llamacpp": server_backend(llama_server, "json_object_schema")},
        routes={"default": {"backends": ["llamacpp"]}}, extra={"cache": "none"}))
    try:
        result = await engine.run("sentiment", {"text": "Terrible, it broke in a day."})
    finally:
        await engine.aclose()
    assert not violations(SENTIMENT["output"], result.output)
    assert result.meta.backend == "llamacpp" and result.meta.model == "gemma-3-270m"
    assert result.meta.tokens_in > 0 and result.meta.tokens_out > 0


async def test_the_server_refuses_a_dialect_it_does_not_speak(
        llama_server: str, make_project: ProjectFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    # llama-cpp-python's server accepts only {"type": "json_object", "schema": ...}: the
    # backend's declared dialect is what makes the constraint reach it.
    engine = Engine.from_config(make_project(
        backends={"llamacpp": server_backend(llama_server, "json_schema")},
        routes={"default": {"backends": ["llamacpp"], "retries": 0}},
        extra={"cache": "none"}))
    try:
        with pytest.raises(BackendError) as caught:
            await engine.run("sentiment", {"text": "Fine."})
    finally:
        await engine.aclose()
    # The server answers its own validation failure with a 500 naming what it accepts: the
    # operator reads that in the server log; the caller's error carries only the status.
    assert caught.value.provider_status == 500
    assert "json_object" not in str(caught.value)
    assert any("json_object" in record.getMessage() for record in caplog.records)
