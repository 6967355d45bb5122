"""Template attacks through the admin HTTP API: sandbox escapes are refused when an override is
saved (or dry-run), nothing runs, the active version stays, and resource bombs are bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.security.conftest import (
    SecureServer,
    assert_problem,
    override_versions,
    still_serves,
)

pytestmark = pytest.mark.slow
URL = "/v1/tenants/acme/overrides/sentiment"
#: A file every payload that reaches a shell or the filesystem would create.
PWNED = Path("/tmp/featurelm-security-pwned")
SHELL = f"popen('touch {PWNED}').read()"

#: (id, template, words the refusal must name). Known Jinja2 sandbox escapes and SSTI probes.
ESCAPES: list[tuple[str, str, tuple[str, ...]]] = [
    ("CVE-2024-56326 stored str.format reference",
     '{% set f = text.format %}{{ f("{0.__class__.__base__.__subclasses__}", text) }}',
     ("'format'", "not allowed")),
    ("CVE-2025-27516 attr filter to str.format",
     '{{ text|attr("format")("{0.__class__.__mro__[1].__subclasses__}") }}',
     ("filter 'attr'", "not allowed")),
    ("CVE-2016-10745 str.format",
     '{{ "{0.__class__.__base__.__subclasses__}".format(text) }}', ("'format'", "not allowed")),
    ("CVE-2019-10906 str.format_map",
     '{{ "{x.__class__.__init__.__globals__}".format_map({"x": text}) }}',
     ("'format_map'", "not allowed")),
    ("attr filter with a built name", '{{ text|attr("__cla" ~ "ss__") }}', ("filter 'attr'",)),
    ("attr chain", '{{ ()|attr("__class__")|attr("__base__") }}', ("filter 'attr'",)),
    ("subscript to a dunder", '{{ text["__class__"]["__mro__"] }}', ("access to item",)),
    ("dunder through a variable", '{% set k = "__class__" %}{{ text[k] }}', ("unsafe",)),
    ("__subclasses__ walk",
     "{{ ''.__class__.__mro__[1].__subclasses__() }}", ("access to attribute", "not allowed")),
    ("__subclasses__ loop",
     "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
     ("access to attribute",)),
    ("lipsum globals", f"{{{{ lipsum.__globals__.os.{SHELL} }}}}", ("not allowed",)),
    ("lipsum as a variable", "{{ lipsum(1) }}", ("undeclared", "lipsum")),
    ("cycler globals", f"{{{{ cycler.__init__.__globals__.os.{SHELL} }}}}", ("not allowed",)),
    ("cycler as a variable", "{{ cycler(1, 2).next() }}", ("undeclared", "cycler")),
    ("joiner as a variable", "{{ joiner() }}", ("undeclared", "joiner")),
    ("namespace as a variable", "{% set ns = namespace(a=1) %}{{ ns.a }}",
     ("undeclared", "namespace")),
    ("request lookup", "{{ request.application.__globals__ }}", ("not allowed",)),
    ("config lookup", "{{ config.items() }}", ("undeclared", "config")),
    ("self lookup", "{{ self }}", ("'self' is not allowed",)),
    ("self internals", "{{ self._TemplateReference__context }}", ("not allowed",)),
    ("range internals", "{{ range.__init__.__globals__ }}", ("not allowed",)),
    ("percent formatting", '{{ "%s" % text }}', ("'%'",)),
    ("include of a host file", '{% include "/etc/passwd" %}', ("not found",)),
    ("include of a config above prompts", '{% include "../featurelm.yaml" %}', ("not found",)),
    ("include chosen by input", "{% include text %}", ("fixed strings",)),
    ("extends chosen by input", "{% extends text %}", ("fixed strings",)),
    ("undeclared variable", "{{ os }}", ("undeclared", "os")),
]

#: (id, template, words the refusal must name): templates that compile but must not finish.
BOMBS: list[tuple[str, str, tuple[str, ...]]] = [
    ("nested range loops",
     "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     ("longer than",)),
    ("string multiplication", '{{ "x" * 100000000 }}', ("rendered-size",)),
    ("input multiplication", "{{ text * 99999999 }}", ("rendered-size",)),
    ("list multiplication", "{{ (range(1000)|list) * 10000000 }}", ("rendered-size",)),
    ("output flood", '{% for i in range(100000) %}{{ "y" * 1000 }}{% endfor %}', ("exceeds",)),
    ("macro recursion", "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}",
     ("rendering failed",)),
    ("huge center width", "{{ text|center(999999999) }}", ("width",)),
    ("huge indent width", "{{ text|indent(999999999) }}", ("width",)),
    ("huge format width", '{{ "{:>999999999}".format(text) }}', ("'format'",)),
    ("huge percent width", '{{ "%999999999s" % text }}', ("'%'",)),
    ("power tower", "{{ 9 ** (9 ** 9) }}", ("exponent",)),
]


def override(user: str, **extra: Any) -> str:
    return yaml.safe_dump({"prompt": {"user": user}, **extra})


@pytest.fixture(scope="module")
def baseline(http: httpx.Client, secure_server: SecureServer) -> list[dict[str, Any]]:
    """acme has one good, active override before any attack."""
    saved = http.put(URL, content=override("Rate this review: {{ text }}"),
                     headers=secure_server.bearer("acme"))
    assert saved.status_code == 201, saved.text
    return override_versions(http, secure_server, "acme")


def put(http: httpx.Client, server: SecureServer, text: str, dry_run: bool) -> httpx.Response:
    return http.put(URL, content=text, params={"dry_run": str(dry_run).lower()},
                    headers={**server.bearer("acme"), "Content-Type": "application/yaml"})


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "save"])
@pytest.mark.parametrize(("template", "named"), [(t, n) for _, t, n in ESCAPES],
                         ids=[i for i, _, _ in ESCAPES])
def test_sandbox_escapes_are_refused_at_save_and_nothing_runs(
        http: httpx.Client, secure_server: SecureServer, baseline: list[dict[str, Any]],
        template: str, named: tuple[str, ...], dry_run: bool) -> None:
    for turn in ("user", "system"):
        prompt = {"user": template} if turn == "user" else {"user": "{{ text }}",
                                                            "system": template}
        text = yaml.safe_dump({"prompt": prompt})
        body = assert_problem(put(http, secure_server, text, dry_run), 422, *named)
        # Static refusals point at the template, render-time ones at the example that ran it.
        assert body["errors"][0]["path"].startswith(("prompt", "examples"))
    assert override_versions(http, secure_server, "acme") == baseline
    assert not PWNED.exists()
    still_serves(http, secure_server)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "save"])
@pytest.mark.parametrize(("template", "named"), [(t, n) for _, t, n in BOMBS],
                         ids=[i for i, _, _ in BOMBS])
def test_resource_bombs_are_refused_within_the_render_budget(
        http: httpx.Client, secure_server: SecureServer, baseline: list[dict[str, Any]],
        template: str, named: tuple[str, ...], dry_run: bool) -> None:
    started = time.monotonic()
    assert_problem(put(http, secure_server, override(template), dry_run), 422, *named)
    # The render budget is 0.3 s; the rest is HTTP and the server's own work.
    assert time.monotonic() - started < 5
    assert override_versions(http, secure_server, "acme") == baseline
    still_serves(http, secure_server)


def test_another_tenant_is_served_while_a_bomb_is_refused(
        http: httpx.Client, secure_server: SecureServer, baseline: list[dict[str, Any]]) -> None:
    bomb = override(BOMBS[0][1])
    refusals: list[int] = []

    def attack() -> None:
        with httpx.Client(base_url=secure_server.url, timeout=30) as own:
            for _ in range(3):
                refusals.append(put(own, secure_server, bomb, dry_run=False).status_code)

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        while attacker.is_alive():
            started = time.monotonic()
            still_serves(http, secure_server, "globex")
            # One render of the bomb is cut at 0.3 s; a call never waits much longer.
            assert time.monotonic() - started < 3
    finally:
        attacker.join()
    assert refusals == [422, 422, 422]
    still_serves(http, secure_server, "globex")


def test_many_examples_of_a_slow_template_share_one_render_budget(
        http: httpx.Client, secure_server: SecureServer, baseline: list[dict[str, Any]]) -> None:
    """Each render stays under the per-render deadline, but a save renders every example
    many times: without one budget for the whole check, the worker would stall for minutes."""
    slow = "{% for i in range(400) %}{% for j in range(400) %}{% endfor %}{% endfor %}{{ text }}"
    examples = [{"input": {"text": f"review {i}"}, "output": {"sentiment": "positive"}}
                for i in range(32)]
    started = time.monotonic()
    response = put(http, secure_server, override(slow, examples=examples), dry_run=False)
    assert time.monotonic() - started < 5
    assert_problem(response, 422, "render budget")
    assert override_versions(http, secure_server, "acme") == baseline
    still_serves(http, secure_server)
