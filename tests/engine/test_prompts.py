"""Templates render in a sandbox: escapes are refused up front, bombs are bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from featurelm.engine.prompts import PromptRenderer, RenderLimits, TemplateRefused


@pytest.fixture
def renderer(tmp_path: Path) -> PromptRenderer:
    (tmp_path / "macros.j2").write_text("{% macro tag(v) %}<t>{{ v }}</t>{% endmacro %}")
    return PromptRenderer(tmp_path, RenderLimits(max_template_chars=5000,
                                                 max_rendered_chars=10_000, timeout_s=0.5))


def render(renderer: PromptRenderer, source: str, **context: object) -> str:
    return renderer.render(renderer.compile(source, context.keys()), context)


def test_input_values_are_data_never_template_source(renderer: PromptRenderer) -> None:
    text = "{{ 7 * 7 }} {% for x in range(3) %}boom{% endfor %} {{ ''.__class__ }}"
    assert render(renderer, "Text: {{ text }}", text=text) == f"Text: {text}"


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ text|attr('__class__') }}",
    "{{ text['__class__'] }}",
    "{{ '{0.__class__}'.format(text) }}",
    "{{ '{x.__class__}'.format_map({'x': text}) }}",
    "{{ text.__init__ }}",
    "{{ namespace }}",
    "{{ config }}",
    "{{ self.__dict__ }}",
    "{% include text %}",
    "{% include 'missing.j2' %}",
])
def test_sandbox_escapes_are_refused_when_compiled(renderer: PromptRenderer, source: str) -> None:
    with pytest.raises(TemplateRefused):
        renderer.compile(source, ["text"])


@pytest.mark.parametrize(("source", "reason"), [
    ("{{ 'a' * 1000000 }}", "rendered-size"),
    ("{{ 'ab'|center(100000) }}", "width"),
    ("{{ text|replace('a', 'aaaaaaaaaaaaaaaaaaaa')|replace('a', 'aaaaaaaaaaaaaaaaaaaa') }}",
     "exceeds|memory budget"),
    ("{{ 2 ** 100000 }}", "exponent"),
    ("{{ '%0999999d' % 1 }}", "not allowed"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "longer than"),
    ("{% for i in range(100000) %}{{ text }}{% endfor %}", "exceeds"),
    # Refused by the recursion limit, or on a slow machine by the deadline first; then the
    # watchdog's interrupt may land in a weakref callback while the recursion unwinds, where
    # Python reports it as unraisable instead of raising it: the refusal holds either way.
    pytest.param("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}", "failed|longer than",
                 marks=pytest.mark.filterwarnings(
                     "ignore::pytest.PytestUnraisableExceptionWarning")),
])
def test_resource_bombs_are_bounded(renderer: PromptRenderer, source: str, reason: str) -> None:
    compiled = renderer.compile(source, ["text"])
    started = time.monotonic()
    with pytest.raises(TemplateRefused, match=reason):
        renderer.render(compiled, {"text": "a" * 1000})
    assert time.monotonic() - started < 3


def test_renderer_still_works_after_a_bomb(renderer: PromptRenderer) -> None:
    bomb = renderer.compile("{% for i in range(100000) %}{% for j in range(100000) %}"
                            "{% endfor %}{% endfor %}", [])
    with pytest.raises(TemplateRefused):
        renderer.render(bomb, {})
    time.sleep(0.6)  # past the old deadline: no stray interrupt may fire now
    assert render(renderer, "ok {{ text }}", text="fine") == "ok fine"


def test_bomb_in_one_thread_leaves_other_renders_alone(renderer: PromptRenderer) -> None:
    bomb = renderer.compile("{% for i in range(100000) %}{% for j in range(100000) %}"
                            "{% endfor %}{% endfor %}", [])
    outcome: list[str] = []

    def run_bomb() -> None:
        try:
            renderer.render(bomb, {})
        except TemplateRefused:
            outcome.append("refused")

    thread = threading.Thread(target=run_bomb)
    thread.start()
    for _ in range(20):
        assert render(renderer, "{{ text|upper }}", text="ok") == "OK"
    thread.join(5)
    assert outcome == ["refused"]


def test_oversized_template_is_refused(renderer: PromptRenderer) -> None:
    with pytest.raises(TemplateRefused, match="character limit"):
        renderer.compile("x" * 6000, [])


def test_includes_and_imports_come_from_the_prompts_dir(renderer: PromptRenderer) -> None:
    source = "{% from 'macros.j2' import tag %}{{ tag(text) }}"
    assert render(renderer, source, text="hi") == "<t>hi</t>"
    with pytest.raises(TemplateRefused, match="not found"):
        renderer.compile("{% include '../../etc/passwd' %}", [])


def test_a_budget_charges_render_time_only(tmp_path: Path) -> None:
    renderer = PromptRenderer(tmp_path, RenderLimits(timeout_s=0.3))
    bomb = renderer.compile("{% for i in range(100000) %}{% for j in range(100000) %}"
                            "{% endfor %}{% endfor %}", [])
    quick = renderer.compile("{{ text }}", ["text"])
    with renderer.budget(0.5):
        time.sleep(0.6)  # work between renders (compiling, loading) is not charged
        assert renderer.render(quick, {"text": "ok"}) == "ok"
        with pytest.raises(TemplateRefused, match="longer than"):
            renderer.render(bomb, {})  # 0.3 s of the 0.5 s
        # Nested: at most what is left (0.2 s), and what it spends is charged to the outer.
        with renderer.budget(), pytest.raises(TemplateRefused, match="used up"):
            renderer.render(bomb, {})
        with pytest.raises(TemplateRefused, match="used up"):
            renderer.render(quick, {"text": "ok"})
