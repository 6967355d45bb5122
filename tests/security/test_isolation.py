"""Tenant isolation: a tenant cannot see or change another's overrides, never gets another's
cached results (nor learns from timing that they exist), and cannot point a call at a route
or address of its choosing."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import yaml

from tests.security.conftest import SecureServer, assert_problem, override_versions, still_serves

pytestmark = pytest.mark.slow
GLOBEX = "/v1/tenants/globex/overrides"


@pytest.fixture(scope="module")
def globex_versions(http: httpx.Client, secure_server: SecureServer) -> list[dict[str, Any]]:
    """globex owns two versions of an override with a private prompt."""
    for text in ("Globex private prompt one: {{ text }}", "Globex private prompt two: {{ text }}"):
        saved = http.put(f"{GLOBEX}/counted", content=yaml.safe_dump({"prompt": {"user": text}}),
                         headers=secure_server.bearer("globex"))
        assert saved.status_code == 201, saved.text
    return override_versions(http, secure_server, "globex", "counted")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", GLOBEX),
    ("GET", f"{GLOBEX}/counted"),
    ("GET", f"{GLOBEX}/counted/versions/1"),
    ("GET", f"{GLOBEX}/counted/diff?from=1&to=2"),
    ("POST", f"{GLOBEX}/counted/versions/1/activate"),
    ("POST", f"{GLOBEX}/counted/versions/1/rollback"),
    ("DELETE", f"{GLOBEX}/counted"),
    ("PUT", f"{GLOBEX}/counted"),
    ("GET", "/v1/tenants"),
    ("POST", "/v1/tenants"),
    ("GET", "/metrics"),
])
def test_a_tenant_cannot_touch_another_tenants_overrides(
        http: httpx.Client, secure_server: SecureServer, globex_versions: list[dict[str, Any]],
        method: str, path: str) -> None:
    content = "prompt: {user: 'acme wrote this {{ text }}'}" if method == "PUT" else None
    response = http.request(method, path, content=content, headers=secure_server.bearer("acme"))
    status = 403 if path in ("/v1/tenants", "/metrics") else 404
    assert_problem(response, status)
    for leaked in ("Globex private prompt", "content_hash", "yaml_text", "globex-"):
        assert leaked not in response.text
    assert override_versions(http, secure_server, "globex", "counted") == globex_versions
    still_serves(http, secure_server)


def call(http: httpx.Client, server: SecureServer, who: str, feature: str,
         text: str) -> dict[str, Any]:
    response = http.post(f"/v1/features/{feature}", json={"input": {"text": text}},
                         headers=server.bearer(who))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_two_tenants_never_share_a_cache_entry(http: httpx.Client,
                                               secure_server: SecureServer) -> None:
    text = f"same input {uuid.uuid4()}"
    calls = secure_server.model.completions
    first = call(http, secure_server, "acme", "counted", text)
    again = call(http, secure_server, "acme", "counted", text)
    other = call(http, secure_server, "initech", "counted", text)
    assert (first["meta"]["cached"], again["meta"]["cached"]) == (False, True)
    # Without `cache.shared`, the second tenant's call is a miss: no timing signal about acme.
    assert other["meta"]["cached"] is False
    assert other["meta"]["tenant"] == "initech"
    assert secure_server.model.completions - calls == 2


def test_a_shared_feature_shares_only_the_unmodified_base(
        http: httpx.Client, secure_server: SecureServer) -> None:
    text = f"shared input {uuid.uuid4()}"
    first = call(http, secure_server, "acme", "counted_shared", text)
    other = call(http, secure_server, "initech", "counted_shared", text)
    assert (first["meta"]["cached"], other["meta"]["cached"]) == (False, True)
    # A tenant with its own prompt never reads the shared entries.
    saved = http.put("/v1/tenants/globex/overrides/counted_shared",
                     content="prompt: {user: 'Globex asks: {{ text }}'}",
                     headers=secure_server.bearer("globex"))
    assert saved.status_code == 201, saved.text
    assert call(http, secure_server, "globex", "counted_shared", text)["meta"]["cached"] is False


@pytest.mark.parametrize(("patch", "named"), [
    ({"model": {"route": "bad_key"}}, "route 'bad_key' is not allowed"),
    ({"model": {"route": "nowhere"}}, "route 'nowhere' is not allowed"),
    ({"model": {"allowed_routes": ["bad_key"]}}, "allowed routes are the operator's"),
    ({"model": {"backend": "http://169.254.169.254/"}}, "does not allow overriding"),
    ({"model": {"base_url": "http://attacker.example/v1"}}, "does not allow overriding"),
    ({"model": {"options": {"base_urls": ["http://attacker.example/v1"]}}},
     "does not allow overriding"),
    ({"backends": {"evil": {"kind": "openai"}}}, "does not allow overriding"),
    ({"routes": {"default": {"backends": ["evil"]}}}, "does not allow overriding"),
    ({"prompt": {"user_file": "../../etc/passwd"}}, "cannot choose template files"),
    ({"cache": {"shared": True}}, "does not allow overriding"),
], ids=["disallowed-route", "unknown-route", "allowed-routes", "backend", "base-url",
        "options", "backends", "routes", "template-file", "cache-shared"])
def test_an_override_cannot_choose_where_calls_go(http: httpx.Client,
                                                  secure_server: SecureServer,
                                                  patch: dict[str, Any], named: str) -> None:
    before = override_versions(http, secure_server, "initech")
    for dry_run in ("true", "false"):
        response = http.put("/v1/tenants/initech/overrides/sentiment",
                            content=yaml.safe_dump(patch), params={"dry_run": dry_run},
                            headers=secure_server.bearer("initech"))
        assert_problem(response, 422, named)
    assert override_versions(http, secure_server, "initech") == before
    still_serves(http, secure_server)


def test_an_allowed_route_switch_is_accepted(http: httpx.Client,
                                             secure_server: SecureServer) -> None:
    response = http.put("/v1/tenants/initech/overrides/sentiment",
                        content="model: {route: alt}", params={"dry_run": "true"},
                        headers=secure_server.bearer("initech"))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("options", "named"), [
    ({"route": "bad_key"}, "route 'bad_key' is not allowed"),
    ({"route": "no-such-route"}, "route 'no-such-route' is not allowed"),
    ({"route": "http://169.254.169.254/"}, "is not allowed"),
    ({"route": ["alt"]}, "options.route a string"),
    ({"base_url": "http://attacker.example/v1"}, "options may contain only"),
], ids=["disallowed", "unknown", "url", "not-a-string", "base-url"])
def test_a_call_cannot_choose_a_route_outside_the_allowed_list(
        http: httpx.Client, secure_server: SecureServer, options: dict[str, Any],
        named: str) -> None:
    calls = secure_server.bad_key.completions
    response = http.post("/v1/features/sentiment",
                         json={"input": {"text": "x"}, "options": options},
                         headers=secure_server.bearer("acme"))
    assert_problem(response, 422, named)
    assert secure_server.bad_key.completions == calls
    allowed = http.post("/v1/features/sentiment",
                        json={"input": {"text": "x"}, "options": {"route": "alt"}},
                        headers=secure_server.bearer("acme"))
    assert allowed.status_code == 200 and allowed.json()["meta"]["route"] == "alt"
