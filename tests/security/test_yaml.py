"""Hostile YAML (Python tags, alias bombs, huge and deeply nested documents) is refused before it
is expanded: by the loader as a ContractError, through the admin API as a 4xx, never a 500."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from featurelm.engine.errors import ContractError
from featurelm.engine.safe_yaml import load_yaml_file, load_yaml_text
from tests.security.conftest import SecureServer, assert_problem, override_versions, still_serves

PWNED = Path("/tmp/featurelm-security-yaml-pwned")
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n"
    for i in range(8)) + "prompt: {user: '{{ text }}'}\n"

#: (id, document, words the refusal names)
HOSTILE: list[tuple[str, str, tuple[str, ...]]] = [
    ("python object apply", f"prompt: !!python/object/apply:os.system ['touch {PWNED}']\n",
     ("tags",)),
    ("python name", "prompt: !!python/name:os.system\n", ("tags",)),
    ("python module", "prompt: !!python/module:os\n", ("tags",)),
    ("python object new", "prompt: !!python/object/new:subprocess.Popen [['id']]\n", ("tags",)),
    ("billion laughs", LAUGHS, ("anchors",)),
    ("alias alone", "prompt: *p\n", ("aliases",)),
    ("anchor alone", "prompt: &p {user: '{{ text }}'}\n", ("anchors",)),
    ("deep flow sequence", "prompt: " + "[" * 10_000 + "]" * 10_000 + "\n", ("nesting",)),
    ("deep flow mapping", "prompt: " + "{a: " * 5_000 + "b" + "}" * 5_000 + "\n", ("nesting",)),
    ("deep block mapping", "".join(f"{' ' * i}k{i}:\n" for i in range(200)) + " " * 200 + "v\n",
     ("nesting",)),
    ("syntax error", "prompt: {user: [unclosed\n", ("invalid yaml",)),
]
#: Over the loader's size limit (over HTTP the smaller body limit answers first: 413).
HUGE = ("huge document", "description: '" + "x" * 190_000 + "'\n", ("over the",))


@pytest.mark.parametrize(("text", "named"), [(t, n) for _, t, n in [*HOSTILE, HUGE]],
                         ids=[i for i, _, _ in [*HOSTILE, HUGE]])
def test_the_loader_refuses_hostile_yaml_before_expanding_it(text: str,
                                                             named: tuple[str, ...]) -> None:
    started = time.monotonic()
    with pytest.raises(ContractError) as refused:
        load_yaml_text(text, source="override", max_bytes=100_000)
    assert time.monotonic() - started < 2
    message = str(refused.value).lower()
    assert all(n.lower() in message for n in named), message
    assert not PWNED.exists()


def test_a_feature_file_with_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(LAUGHS)
    with pytest.raises(ContractError, match="anchors"):
        load_yaml_file(path, max_bytes=100_000)
    path.write_text("x: '" + "y" * 200_000 + "'\n")
    with pytest.raises(ContractError, match="over the 100000-byte limit"):
        load_yaml_file(path, max_bytes=100_000)


@pytest.mark.slow
@pytest.mark.parametrize(("text", "named"), [(t, n) for _, t, n in HOSTILE],
                         ids=[i for i, _, _ in HOSTILE])
def test_the_admin_api_refuses_hostile_yaml_with_a_4xx(
        http: httpx.Client, secure_server: SecureServer, text: str,
        named: tuple[str, ...]) -> None:
    before = override_versions(http, secure_server, "initech")
    for dry_run in ("true", "false"):
        response = http.put("/v1/tenants/initech/overrides/sentiment", content=text,
                            params={"dry_run": dry_run}, headers=secure_server.bearer("initech"))
        assert_problem(response, 422, *named)
    assert override_versions(http, secure_server, "initech") == before
    assert not PWNED.exists()
    still_serves(http, secure_server)


@pytest.mark.slow
def test_an_override_over_the_body_limit_is_refused_unread(
        http: httpx.Client, secure_server: SecureServer) -> None:
    text = "description: '" + "x" * 300_000 + "'\n"
    response = http.put("/v1/tenants/initech/overrides/sentiment", content=text,
                        headers=secure_server.bearer("initech"))
    assert_problem(response, 413, "over the 200000-byte limit")
    still_serves(http, secure_server)


@pytest.mark.slow
def test_an_override_that_is_not_utf8_is_refused(
        http: httpx.Client, secure_server: SecureServer) -> None:
    response = http.put("/v1/tenants/initech/overrides/sentiment",
                        content=b"prompt: {user: '\xff\xfe{{ text }}'}\n",
                        headers=secure_server.bearer("initech"))
    assert_problem(response, 422, "utf-8")
    still_serves(http, secure_server)
