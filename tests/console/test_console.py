"""The console in-process: the HTTP API's authorization, sessions, CSRF and headers, and the
pages off the happy path (unknown keys and features, invalid bytes, other tenants)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from featurelm.engine import Engine
from featurelm.serving.app import create_app
from tests.conftest import SENTIMENT, ProjectFactory, scripted
from tests.serving.conftest import Keys, make_keys

FEATURE = {**SENTIMENT, "overridable": ["prompt.system", "examples"]}
OVERRIDE = "prompt:\n  system: Classify the sentiment, politely.\n"


class Console:
    def __init__(self, http: httpx.AsyncClient, engine: Engine, keys: Keys) -> None:
        self.http, self.engine, self.keys = http, engine, keys
        self.csrf = ""

    async def get(self, path: str) -> httpx.Response:
        response = await self.http.get(path)
        if found := re.search(r'name="csrf" value="([^"]+)"', response.text):
            self.csrf = found.group(1)
        return response

    async def post(self, path: str, **fields: str) -> httpx.Response:
        return await self.http.post(path, data={"csrf": self.csrf, **fields})

    async def sign_in(self, who: str) -> httpx.Response:
        await self.get("/console/sign-in")
        key = self.keys.admin if who == "admin" else self.keys.tenants[who]
        signed = await self.post("/console/sign-in", api_key=key)
        await self.get("/console/features")
        return signed


Factory = Callable[..., Awaitable[Console]]


@pytest.fixture
async def console(make_project: ProjectFactory) -> AsyncIterator[Factory]:
    opened: list[tuple[httpx.AsyncClient, Engine]] = []

    async def make(auth: str = "required") -> Console:
        config = make_project([FEATURE], backends={"p": scripted('{"sentiment": "positive"}')},
                              routes={"default": {"backends": ["p"]}},
                              extra={"auth": auth, "traces": {"sample_rate": 1}})
        engine = Engine.from_config(config)
        await engine.start()
        # https: the session cookie is Secure, so a client sends it over TLS only.
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(engine)),
                                 base_url="https://console.test")
        opened.append((http, engine))
        return Console(http, engine, await make_keys(engine.config.store, ["acme", "globex"]))

    yield make
    for http, engine in opened:
        await http.aclose()
        await engine.aclose()


async def test_pages_need_a_key_and_an_unknown_key_is_refused(console: Factory) -> None:
    c = await console()
    first = await c.get("/console/features")
    assert first.status_code == 303 and first.headers["location"] == "/console/sign-in"
    await c.get("/console/sign-in")
    refused = await c.post("/console/sign-in", api_key="flm_not-a-key")
    assert refused.status_code == 401 and "not known here" in refused.text
    assert (await c.get("/console/features")).status_code == 303


async def test_the_session_cookie_is_secure_http_only_strict_and_renewed_at_sign_in(
        console: Factory) -> None:
    c = await console()
    before = (await c.get("/console/sign-in")).cookies["featurelm_console"]
    signed = await c.post("/console/sign-in", api_key=c.keys.tenants["acme"])
    cookie = signed.headers["set-cookie"]
    assert all(flag in cookie for flag in ("Secure", "HttpOnly", "SameSite=strict",
                                           "Path=/console"))
    assert signed.cookies["featurelm_console"] != before
    # The API key never reaches the browser.
    assert c.keys.tenants["acme"] not in cookie + (await c.get("/console/features")).text


async def test_every_page_carries_the_consoles_content_security_policy(console: Factory) -> None:
    c = await console()
    await c.sign_in("acme")
    for path in ("/console/sign-in", "/console/features", "/console/features/sentiment",
                 "/console/features/sentiment/override", "/console/calls",
                 "/console/features/missing"):
        response = await c.get(path)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert response.headers["x-frame-options"] == "DENY"
        # Nothing from another host, and no inline script or style the CSP would block.
        assert not re.search(r'(src|href)="(https?:)?//', response.text), path
        assert "<style" not in response.text and "style=" not in response.text
        assert not re.search(r"<script(?![^>]*\bsrc=)", response.text), path


async def test_a_change_without_the_csrf_token_is_refused_and_nothing_is_saved(
        console: Factory) -> None:
    c = await console()
    await c.sign_in("acme")
    forged = await c.http.post("/console/features/sentiment/override/activate",
                               data={"override": OVERRIDE})
    stale = await c.http.post("/console/features/sentiment/override/activate",
                              data={"override": OVERRIDE, "csrf": "guessed"})
    assert forged.status_code == stale.status_code == 403
    assert "CSRF" in forged.text
    assert await c.engine.overrides.list_versions("acme") == []


async def test_a_tenant_saves_and_rolls_back_and_another_tenant_sees_nothing(
        console: Factory) -> None:
    c = await console()
    await c.sign_in("acme")
    first = await c.post("/console/features/sentiment/override/activate", override=OVERRIDE)
    second = await c.post("/console/features/sentiment/override/activate",
                          override=OVERRIDE.replace("politely", "briefly"))
    assert first.headers["location"].endswith("saved=1")
    assert second.headers["location"].endswith("saved=2")
    back = await c.post("/console/features/sentiment/override/versions/1/rollback")
    assert back.status_code == 303
    [active] = [v for v in await c.engine.overrides.list_versions("acme") if v.active]
    assert active.version == 1 and active.author == "tenant:acme"

    other = await console_as(c, "globex")
    page = await other.get("/console/features/sentiment/override")
    assert "No versions yet" in page.text and "politely" not in page.text
    # Naming acme's versions does nothing: the console acts for the key's own tenant only.
    await other.post("/console/features/sentiment/override/versions/2/rollback")
    [still] = [v for v in await c.engine.overrides.list_versions("acme") if v.active]
    assert still.version == 1


async def console_as(c: Console, who: str) -> Console:
    fresh = Console(httpx.AsyncClient(transport=c.http._transport,
                                      base_url="https://console.test"), c.engine, c.keys)
    await fresh.sign_in(who)
    return fresh


async def test_validation_as_you_type_names_the_line_and_saves_nothing(
        console: Factory) -> None:
    c = await console()
    await c.sign_in("acme")
    checked = await c.post("/console/features/sentiment/override/check",
                           override=OVERRIDE + "output:\n  type: object\n")
    assert "line 3: output: is not overridable" in checked.text
    fine = await c.post("/console/features/sentiment/override/check", override=OVERRIDE)
    assert "Valid" in fine.text
    broken = await c.post("/console/features/sentiment/override/check",
                          override="prompt: [unclosed\n")
    assert broken.status_code == 200 and "problem" in broken.text


async def test_invalid_form_bytes_and_bad_inputs_are_pages_not_tracebacks(
        console: Factory) -> None:
    c = await console()
    await c.sign_in("acme")
    raw = await c.http.post("/console/features/sentiment/override/check",
                            content=b"override=%ff%fe&csrf=" + c.csrf.encode(),
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert raw.status_code == 422 and "not valid UTF-8" in raw.text
    as_json = await c.http.post("/console/features/sentiment/override/check",
                                json={"override": OVERRIDE})
    assert as_json.status_code == 422 and "x-www-form-urlencoded" in as_json.text
    typed = await c.post("/console/features/sentiment/override/dry-run", override=OVERRIDE,
                         input="{not json")
    assert typed.status_code == 422 and "not valid JSON" in typed.text
    wrong_input = await c.post("/console/features/sentiment/override/dry-run",
                               override=OVERRIDE, input='{"text": 5}')
    assert wrong_input.status_code == 200 and "Your input" in wrong_input.text
    missing = await c.get("/console/features/nope")
    assert missing.status_code == 404 and "unknown feature" in missing.text
    bad_since = await c.get("/console/calls?since=yesterday-ish")
    assert bad_since.status_code == 200 and 'role="alert"' in bad_since.text


async def test_feedback_goes_through_the_feedback_api_and_is_scoped_to_the_tenant(
        console: Factory) -> None:
    c = await console()
    called = await c.http.post("/v1/features/sentiment", json={"input": {"text": "Nice"}},
                               headers=c.keys.bearer("acme"))
    request_id = called.headers["x-request-id"]
    await c.engine.flush_traces()
    await c.sign_in("acme")
    listed = await c.get("/console/calls?feature=sentiment&status=ok")
    assert request_id in listed.text
    wrong = await c.post(f"/console/calls/{request_id}/feedback",
                         correction='{"sentiment": "furious"}')
    assert wrong.status_code == 422 and "output schema" in wrong.text
    good = await c.post(f"/console/calls/{request_id}/feedback", score="1")
    assert good.headers["location"].endswith("feedback=1")

    other = await console_as(c, "globex")
    assert request_id not in (await other.get("/console/calls")).text
    assert (await other.get(f"/console/calls/{request_id}")).status_code == 404
    assert (await other.post(f"/console/calls/{request_id}/feedback",
                             score="0")).status_code == 404


async def test_with_auth_off_the_console_opens_on_the_base_features(console: Factory) -> None:
    c = await console(auth="off")
    page = await c.get("/console/features")
    assert page.status_code == 200 and "no tenant (auth off)" in page.text
    editor = await c.get("/console/features/sentiment/override")
    assert editor.status_code == 403 and "sign in with a tenant" in editor.text


async def test_the_admin_sees_every_tenant_and_acts_for_the_one_chosen(
        console: Factory) -> None:
    c = await console()
    await c.sign_in("admin")
    tenants = await c.get("/console/tenants")
    assert "acme" in tenants.text and "globex" in tenants.text
    chosen = await c.post("/console/tenants", tenant="globex")
    assert chosen.status_code == 303
    await c.post("/console/features/sentiment/override/activate", override=OVERRIDE)
    [saved] = await c.engine.overrides.list_versions("globex")
    assert saved.author == "admin"
    assert (await c.post("/console/tenants", tenant="nobody")).status_code == 404


