"""`featurelm tenant` and `featurelm override`: one clear line on error, never a traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from featurelm.cli import main
from featurelm.engine.engine import Engine
from featurelm.engine.store import Principal
from tests.conftest import SENTIMENT, ProjectFactory

REPO = Path(__file__).resolve().parents[2]
FEATURE: dict[str, Any] = {**SENTIMENT, "overridable": ["prompt.system", "examples"]}
V1 = "prompt:\n  system: You are terse.\n"
V2 = "prompt:\n  system: You are chatty.\n"


@pytest.fixture
def project(make_project: ProjectFactory, tmp_path: Path) -> Path:
    (tmp_path / "v1.yaml").write_text(V1)
    (tmp_path / "v2.yaml").write_text(V2)
    (tmp_path / "bad.yaml").write_text("output:\n  type: object\n")
    return make_project([FEATURE])


class Cli:
    def __init__(self, config: Path, capsys: pytest.CaptureFixture[str]):
        self.config = config
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        code = main(["--config", str(self.config), *args])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(project: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(project, capsys)


def authenticate(config: Path, key: str) -> Principal | None:
    async def check() -> Principal | None:
        engine = Engine.from_config(config)
        try:
            return await (await engine.store()).authenticate(key)
        finally:
            await engine.aclose()
    return asyncio.run(check())


def test_tenant_create_prints_a_working_key_once(cli: Cli, project: Path) -> None:
    code, out, err = cli("tenant", "create", "acme", "--author", "ops")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "created tenant acme"
    key = out.splitlines()[1].rsplit(" ", 1)[-1]
    assert key.startswith("flm_")
    assert authenticate(project, key) == Principal(tenant="acme", admin=False)
    code, out, _ = cli("tenant", "list")
    assert code == 0 and out.startswith("acme\t") and key not in out


@pytest.mark.parametrize(("args", "message"), [
    (["tenant", "create", "Bad Name"], "error: invalid tenant name 'Bad Name'"),
    (["override", "apply", "ghost", "sentiment", "v1.yaml"], "error: unknown tenant 'ghost'"),
    (["override", "apply", "acme", "nope", "v1.yaml"], "error: unknown feature 'nope'"),
    (["override", "apply", "acme", "sentiment", "missing.yaml"], "error: cannot read"),
    (["override", "apply", "acme", "sentiment", "bad.yaml"],
     "error: {folder}/bad.yaml: line 2: output.type: the output schema is the product's "
     "contract"),
    (["override", "rollback", "acme", "sentiment", "7"],
     "error: tenant 'acme' has no version 7 of 'sentiment'"),
    (["override", "list", "ghost"], "error: unknown tenant 'ghost'"),
])
def test_errors_are_one_line_and_exit_2(cli: Cli, project: Path, args: list[str],
                                        message: str) -> None:
    assert cli("tenant", "create", "acme")[0] == 0
    args = [str(project.parent / a) if a.endswith(".yaml") else a for a in args]
    code, out, err = cli(*args)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith(message.format(folder=project.parent)), err


def test_a_refused_apply_lists_each_problem_with_its_file_line_and_path(
        cli: Cli, project: Path) -> None:
    assert cli("tenant", "create", "acme")[0] == 0
    file = project.parent / "two.yaml"
    file.write_text("prompt:\n  system: fine\noutput:\n  type: object\n"
                    "model:\n  temperature: 0.5\n")
    code, out, err = cli("override", "apply", "acme", "sentiment", str(file))
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: {file}: line 4: output.type: the output schema is the product's contract and "
        "cannot be overridden (fix: remove it from the override)",
        f"error: {file}: line 6: model.temperature: sentiment does not allow overriding "
        "model.temperature (fix: overridable fields: examples, prompt.system)"]
    assert "override acme/sentiment" not in err


@pytest.mark.parametrize(("text", "where"), [
    ('prompt:\n  system: "{{ nope( }}"\n', "line 2: prompt.system: syntax error"),
    ("examples:\n  - input: {text: hi}\n    output: {sentiment: maybe}\n",
     "line 3: examples.0.output: $.sentiment: 'maybe' is not one of"),
    ("prompt: [\n", "line 2: (top level): invalid YAML"),
])
def test_a_refused_apply_points_at_the_line(cli: Cli, project: Path, text: str,
                                            where: str) -> None:
    assert cli("tenant", "create", "acme")[0] == 0
    file = project.parent / "override.yaml"
    file.write_text(text)
    code, _, err = cli("override", "apply", "acme", "sentiment", str(file), "--dry-run")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {file}: {where}"), err


def test_apply_dry_run_list_rollback_and_diff(cli: Cli, project: Path) -> None:
    folder = project.parent
    assert cli("tenant", "create", "acme")[0] == 0

    code, out, _ = cli("override", "apply", "acme", "sentiment", str(folder / "v1.yaml"),
                       "--dry-run")
    assert code == 0 and "dry run, nothing saved" in out
    assert "[system] You are terse." in out
    assert cli("override", "list", "acme")[1] == "acme has no override versions\n"

    assert cli("override", "apply", "acme", "sentiment", str(folder / "v1.yaml"),
               "--author", "ann")[1] == "ok: acme/sentiment version 1 (active)\n"
    assert cli("override", "--author", "bob", "apply", "acme", "sentiment",
               str(folder / "v2.yaml"))[1] == "ok: acme/sentiment version 2 (active)\n"
    code, out, _ = cli("override", "list", "acme", "sentiment")
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0
    assert [(r[0], r[1], r[3]) for r in rows] == [("  sentiment", "v1", "ann"),
                                                  ("* sentiment", "v2", "bob")]

    code, out, _ = cli("override", "rollback", "acme", "sentiment", "1")
    assert (code, out) == (0, "ok: acme/sentiment rolled back to version 1\n")
    assert cli("override", "list", "acme")[1].startswith("* sentiment\tv1")

    code, out, _ = cli("override", "diff", "acme", "sentiment", "1", "2")
    assert code == 0
    assert "-  system: You are terse.\n+  system: You are chatty.\n" in out


def test_a_bad_file_in_a_real_process_gives_one_line_and_exit_2(project: Path) -> None:
    env = dict(os.environ)
    base = [sys.executable, "-m", "featurelm.cli", "--config", str(project)]
    created = subprocess.run([*base, "tenant", "create", "acme"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    (project.parent / "bomb.yaml").write_text("a: &a [x, x]\nb: [*a, *a]\n")
    done = subprocess.run([*base, "override", "apply", "acme", "sentiment",
                           str(project.parent / "bomb.yaml")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert "anchors" in done.stderr and "Traceback" not in done.stderr
