"""The public Python API: what `featurelm` exports, the docs page's example, `async with`, and
serving, evals and the CLI kept to the engine's documented members."""

from __future__ import annotations

import ast
import dataclasses
import importlib.resources
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import featurelm
from featurelm import BackendError, Engine
from featurelm.engine.backends import Backend
from featurelm.engine.backends.scripted import ScriptedBackend
from tests.conftest import REPO_ROOT, ProjectFactory, free_port

PAGE = REPO_ROOT / "docs" / "python.md"
#: A fenced block whose info string names a file: ```yaml featurelm.yaml
BLOCK = re.compile(r"^```(\w+) ([^\n`]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)

#: Engine attributes that are internals: only the engine itself may touch them.
INTERNAL = {"registry", "dispatcher", "cache", "renderer", "backends"}


def test_the_docs_example_runs_and_prints_what_the_page_says(tmp_path: Path) -> None:
    blocks = {name.strip(): text for _, name, text in BLOCK.findall(PAGE.read_text())}
    expected = blocks.pop("output")
    assert set(blocks) == {"featurelm.yaml", "features/sentiment.yaml", "example.py"}
    for name, text in blocks.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected


def test_all_names_exactly_what_product_code_imports() -> None:
    assert {"Engine", "RunOptions", "Result", "Meta", "EngineStats", "FeaturelmError",
            "ContractError", "InputError", "TooLargeError", "NotFoundError", "BackendError",
            "BackendTimeout", "OutputError", "UnavailableError"} <= set(featurelm.__all__)
    assert sorted(featurelm.__all__) == featurelm.__all__
    missing = [name for name in featurelm.__all__ if not hasattr(featurelm, name)]
    assert missing == []
    for typed in (featurelm.Result, featurelm.Meta, featurelm.RunOptions, featurelm.EngineStats,
                  featurelm.SchemaViolation, featurelm.Attempt, featurelm.ContractIssue):
        assert dataclasses.is_dataclass(typed)
    errors = [getattr(featurelm, n) for n in featurelm.__all__ if n.endswith("Error")]
    assert all(issubclass(e, featurelm.FeaturelmError) for e in errors)


def test_the_installed_package_is_marked_typed() -> None:
    assert importlib.resources.files("featurelm").joinpath("py.typed").is_file()
    # The tests run against the installed package, never the checkout.
    assert Path(featurelm.__file__).parent != REPO_ROOT / "featurelm"


def _reaches(path: Path) -> list[str]:
    """`<...>engine.<internal>` and `<...>engine._private` in one module, as file:line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        name = owner.id if isinstance(owner, ast.Name) else \
            owner.attr if isinstance(owner, ast.Attribute) else None
        if name == "engine" and (node.attr in INTERNAL or node.attr.startswith("_")):
            found.append(f"{path.name}:{node.lineno}: engine.{node.attr}")
    return found


def test_serving_evals_and_the_cli_use_only_the_documented_engine() -> None:
    package = Path(featurelm.__file__).parent
    modules = [*sorted((package / "serving").rglob("*.py")),
               *sorted((package / "evals").rglob("*.py")), package / "cli.py"]
    assert len(modules) > 20
    assert [reach for module in modules for reach in _reaches(module)] == []


def test_the_reach_check_would_see_a_reach(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f(svc):\n    return svc.engine.dispatcher.breakers, engine._store\n")
    assert sorted(_reaches(module)) == ["m.py:2: engine._store", "m.py:2: engine.dispatcher"]


class Closing:
    """Wraps a backend and notes that it was closed."""

    def __init__(self, backend: Backend, closed: list[str]):
        self.inner = backend
        self.name = backend.name
        self.capabilities = backend.capabilities
        self.closed = closed

    async def complete(self, request: Any) -> Any:
        return await self.inner.complete(request)

    async def aclose(self) -> None:
        self.closed.append(self.name)


async def test_async_with_closes_the_backends_even_when_the_body_raises(
        make_project: ProjectFactory) -> None:
    closed: list[str] = []
    config = make_project()
    with pytest.raises(RuntimeError, match="product bug"):
        async with Engine.from_config(config,
                                  backend_wrapper=lambda b: Closing(b, closed)) as engine:
            result = await engine.run("sentiment", {"text": "Lovely."})
            assert result.output == {"sentiment": "positive"}
            raise RuntimeError("product bug")
    assert closed == ["primary"]


async def test_a_start_that_fails_closes_what_it_opened(make_project: ProjectFactory) -> None:
    closed: list[str] = []
    # auth: required connects the store at start; nothing listens on that port.
    config = make_project(extra={"auth": "required",
                                 "store": f"postgresql://127.0.0.1:{free_port()}/test"})
    engine = Engine.from_config(config, backend_wrapper=lambda b: Closing(b, closed))
    with pytest.raises(Exception):  # noqa: B017 (the store's own error; its kind is not the point)
        async with engine:
            pytest.fail("the body must not run")
    assert closed == ["primary"]
    assert engine.stats().store_failures == 1


async def test_routes_whose_every_breaker_is_open_are_reported_unavailable(
        make_project: ProjectFactory) -> None:
    config = make_project(routes={"default": {"backends": ["primary"], "retries": 0}})
    down = BackendError("upstream is down", backend="primary", retryable=True)

    def failing(backend: Backend) -> Backend:
        return ScriptedBackend([down], name=backend.name)

    async with Engine.from_config(config, backend_wrapper=failing) as engine:
        assert engine.unavailable_routes() == []
        for _ in range(5):  # the breaker's failure threshold
            with pytest.raises(BackendError):
                await engine.run("sentiment", {"text": "Lovely."},
                                 options=featurelm.RunOptions(cache_read=False))
        assert engine.unavailable_routes() == ["default"]


def test_the_engines_config_cannot_be_replaced(make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project())
    with pytest.raises(AttributeError):
        engine.config = engine.config  # type: ignore[misc]


async def test_a_stream_yields_the_models_text_then_the_same_result_as_run(
        make_project: ProjectFactory) -> None:
    async with Engine.from_config(make_project()) as engine:
        events = [event async for event in engine.stream(
            "sentiment", {"text": "great"}, options=featurelm.RunOptions(cache_read=False))]
        ran = await engine.run("sentiment", {"text": "great"},
                               options=featurelm.RunOptions(cache_read=False))
    *deltas, done = events
    assert deltas and all(isinstance(d, featurelm.Delta) for d in deltas)
    assert isinstance(done, featurelm.Done)
    assert json.loads("".join(d.text for d in deltas)) == done.result.output == ran.output
    assert done.result.meta.backend == ran.meta.backend == "primary"


async def test_a_stream_with_bad_input_raises_before_its_first_event(
        make_project: ProjectFactory) -> None:
    async with Engine.from_config(make_project()) as engine:
        events = engine.stream("sentiment", {"text": 5})
        with pytest.raises(featurelm.InputError):
            await anext(events)
