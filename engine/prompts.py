"""Sandboxed Jinja2 rendering of feature prompts, with static checks and resource bounds.

Templates come from operators and, through overrides, from tenants, so they are untrusted:
- they run in Jinja2's ImmutableSandboxedEnvironment, with `str.format`/`format_map` and the
  object-leaking globals (`lipsum`, `cycler`, `joiner`) removed, and only a curated filter set;
- before use, a static check refuses any private attribute access, unknown variables and
  oversized templates, so an escape attempt is refused when saved, not when served;
- rendering runs under a deadline and an output cap, and operators that could allocate
  huge strings or numbers (`*`, `**`, `%`, `replace`, widths) are bounded up front.
Input values are passed as data in the render context; they are never compiled as source.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateSyntaxError,
    meta,
    nodes,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

T = TypeVar("T")

#: Globals a template may use besides the input fields.
ALLOWED_GLOBALS = frozenset({"range", "dict", "true", "false", "none", "True", "False", "None"})
#: Filters a template may use; everything else is removed from the environment, so an unknown
#: filter (for example `attr`) fails when the template is compiled.
ALLOWED_FILTERS = frozenset({
    "abs", "capitalize", "count", "d", "default", "e", "escape", "first", "float", "int",
    "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
    "replace", "reverse", "round", "select", "selectattr", "sort", "string", "striptags",
    "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "urlencode", "wordcount",
    "center", "indent", "wordwrap", "batch", "slice", "items",
})
BLOCKED_ATTRIBUTES = frozenset({"format", "format_map", "mro", "gi_frame", "cr_frame",
                                "f_globals", "func_globals"})


class TemplateRefused(Exception):
    """A template failed a static check, exceeded a budget, or hit the sandbox."""


@dataclass(frozen=True)
class RenderLimits:
    max_template_chars: int = 20_000
    max_rendered_chars: int = 100_000
    timeout_s: float = 1.0


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, limits: RenderLimits, **kwargs: Any):
        super().__init__(**kwargs)
        self.limits = limits

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr in BLOCKED_ATTRIBUTES:
            return False
        return bool(super().is_safe_attribute(obj, attr, value))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        cap = self.limits.max_rendered_chars
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) \
                        and len(seq) * max(times, 0) > cap:
                    raise SecurityError("repetition would exceed the rendered-size limit")
        elif operator == "**":
            if isinstance(right, int | float) and (abs(right) > 64 or (
                    isinstance(left, int | float) and abs(left) > 2**32)):
                raise SecurityError("exponent too large")
        elif operator == "%" and isinstance(left, str):
            raise SecurityError("'%' string formatting is not allowed in templates")
        return super().call_binop(context, operator, left, right)


def _bounded_width(limit: int, name: str) -> Callable[..., Any]:
    def check(value: Any) -> None:
        if isinstance(value, int) and abs(value) > limit:
            raise SecurityError(f"{name}: width {value} exceeds {limit}")
    return check


def _make_environment(prompts_dir: Path | None, limits: RenderLimits) -> _BoundedEnvironment:
    env = _BoundedEnvironment(
        limits,
        loader=FileSystemLoader(str(prompts_dir)) if prompts_dir else None,
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        auto_reload=False,
    )
    env.globals = {k: v for k, v in env.globals.items() if k in ALLOWED_GLOBALS}
    filters = {k: v for k, v in env.filters.items() if k in ALLOWED_FILTERS}
    cap = limits.max_rendered_chars
    width = _bounded_width(1000, "width")
    original = dict(filters)

    def replace(s: Any, old: str, new: str, count: int | None = None) -> Any:
        text = str(s)
        hits = (len(text) + 1) if old == "" else text.count(str(old))
        if len(text) + hits * max(len(str(new)) - len(str(old)), 0) > cap:
            raise SecurityError("replace would exceed the rendered-size limit")
        return text.replace(str(old), str(new), -1 if count is None else count)

    def widthed(name: str) -> Callable[..., Any]:
        inner = original[name]

        def call(*args: Any, **kwargs: Any) -> Any:
            for value in (*args[1:], *kwargs.values()):
                width(value)
            return inner(*args, **kwargs)
        return call

    filters["replace"] = replace
    for name in ("center", "indent", "wordwrap", "batch", "slice", "truncate"):
        filters[name] = widthed(name)
    env.filters = filters
    return env


def _interrupt(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(_RenderTimeout))


class _RenderTimeout(BaseException):
    """Injected into a render that ran past its deadline (a BaseException so templates can't
    swallow it)."""


def run_with_deadline(fn: Callable[[], T], timeout: float) -> T:
    """Run `fn` in this thread, interrupting it if it runs longer than `timeout` seconds.

    Jinja compiles templates to Python bytecode, so a loop bomb is interrupted between
    bytecodes by an asynchronous exception. The lock makes sure the exception is only ever
    injected while `fn` (or this wrapper) is still running.
    """
    lock = threading.Lock()
    state = {"done": False}
    thread_id = threading.get_ident()

    def fire() -> None:
        with lock:
            if not state["done"]:
                _interrupt(thread_id)

    timer = threading.Timer(timeout, fire)
    timer.daemon = True
    try:
        try:
            timer.start()
            return fn()
        finally:
            with lock:
                state["done"] = True
            timer.cancel()
    except _RenderTimeout:
        raise TemplateRefused(f"rendering took longer than {timeout:g}s") from None


@dataclass(frozen=True)
class CompiledTemplate:
    source: str
    variables: frozenset[str]
    render_fn: Callable[[Mapping[str, Any]], Iterable[str]]


class PromptRenderer:
    """Compiles and renders templates for one prompts/ directory under fixed limits."""

    def __init__(self, prompts_dir: Path | None, limits: RenderLimits | None = None):
        self.limits = limits or RenderLimits()
        self.env = _make_environment(prompts_dir, self.limits)

    def compile(self, source: str, allowed_variables: Iterable[str]) -> CompiledTemplate:
        """Statically check and compile `source`; raises TemplateRefused with the reason."""
        if len(source) > self.limits.max_template_chars:
            raise TemplateRefused(
                f"template is {len(source)} characters, over the "
                f"{self.limits.max_template_chars}-character limit")
        try:
            ast = self.env.parse(source)
        except TemplateSyntaxError as exc:
            raise TemplateRefused(f"syntax error on line {exc.lineno}: {exc.message}") from None
        self._check_nodes(ast)
        allowed = frozenset(allowed_variables)
        referenced = meta.find_undeclared_variables(ast)
        unknown = sorted(referenced - allowed - ALLOWED_GLOBALS)
        if unknown:
            raise TemplateRefused(
                f"template uses undeclared variable(s) {', '.join(unknown)}; a template may use "
                f"only the input fields ({', '.join(sorted(allowed)) or 'none'})")
        try:
            template = self.env.from_string(ast)
        except TemplateError as exc:
            raise TemplateRefused(str(exc)) from None
        return CompiledTemplate(source, frozenset(referenced), template.generate)

    def _check_nodes(self, ast: nodes.Template) -> None:
        for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Test,
                                  nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            if isinstance(node, nodes.Getattr):
                if node.attr.startswith("_") or node.attr in BLOCKED_ATTRIBUTES:
                    raise TemplateRefused(f"line {node.lineno}: access to attribute "
                                          f"{node.attr!r} is not allowed")
            elif isinstance(node, nodes.Getitem):
                if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) and (
                        node.arg.value.startswith("_") or node.arg.value in BLOCKED_ATTRIBUTES):
                    raise TemplateRefused(f"line {node.lineno}: access to item "
                                          f"{node.arg.value!r} is not allowed")
            elif isinstance(node, nodes.Filter):
                if node.name not in self.env.filters:
                    raise TemplateRefused(f"line {node.lineno}: filter {node.name!r} is not "
                                          f"allowed")
            elif isinstance(node, nodes.Test):
                if node.name not in self.env.tests:
                    raise TemplateRefused(f"line {node.lineno}: test {node.name!r} is unknown")
            elif isinstance(node, nodes.Include | nodes.Import | nodes.FromImport | nodes.Extends):
                if not isinstance(node.template, nodes.Const) or \
                        not isinstance(node.template.value, str):
                    raise TemplateRefused(f"line {node.lineno}: included template names must be "
                                          "fixed strings")
                if self.env.loader is None:
                    raise TemplateRefused(f"line {node.lineno}: no prompts directory configured")
                try:
                    self.env.get_template(node.template.value)
                except TemplateError:
                    raise TemplateRefused(
                        f"line {node.lineno}: template {node.template.value!r} not found "
                        "under prompts/") from None

    def render(self, template: CompiledTemplate, context: Mapping[str, Any]) -> str:
        """Render with the output cap and deadline; raises TemplateRefused on any breach."""
        cap = self.limits.max_rendered_chars

        def produce() -> str:
            parts: list[str] = []
            size = 0
            for chunk in template.render_fn(context):
                size += len(chunk)
                if size > cap:
                    raise TemplateRefused(f"rendered prompt exceeds {cap} characters")
                parts.append(chunk)
            return "".join(parts)

        try:
            return run_with_deadline(produce, self.limits.timeout_s)
        except SecurityError as exc:
            raise TemplateRefused(f"refused by the sandbox: {exc}") from None
        except TemplateRefused:
            raise
        except (TemplateError, ArithmeticError, TypeError, ValueError, RecursionError,
                MemoryError) as exc:
            raise TemplateRefused(f"rendering failed: {type(exc).__name__}: {exc}") from None
