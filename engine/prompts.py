"""Sandboxed Jinja2 rendering of feature prompts, with static checks and resource bounds.

Templates come from operators and, through overrides, from tenants, so they are untrusted:
- they run in Jinja2's ImmutableSandboxedEnvironment, with `str.format`/`format_map` and the
  object-leaking globals (`lipsum`, `cycler`, `joiner`) removed, and only a curated filter set;
- before use, a static check refuses any private attribute access, unknown variables and
  oversized templates, so an escape attempt is refused when saved, not when served;
- rendering runs under a deadline and an output cap, and under a memory budget as real as
  the deadline: every operation that can build a large string or list (`*`, `+`, `~`, `**`,
  string methods such as `ljust`/`center`/`replace`/`join`, filters such as `join`/`indent`/
  `wordwrap`) is sized before it runs and charged to the render's budget, so a template can
  neither allocate past it in one step nor a step at a time;
- a `budget()` shares one deadline across many renders (a whole conversation, every example
  of an override check), so a template just under the per-render deadline cannot multiply it.
Input values are passed as data in the render context; they are never compiled as source.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
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
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
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
    "center", "indent", "wordwrap", "batch", "slice", "items", "neutralize",
})
BLOCKED_ATTRIBUTES = frozenset({"format", "format_map", "mro", "gi_frame", "cr_frame",
                                "f_globals", "func_globals"})
#: Names Jinja defines in every template that lead to template internals, not to data.
BLOCKED_NAMES = frozenset({"self"})

#: Seconds of render time left to every render inside a `PromptRenderer.budget()` block.
_budget_left: ContextVar[list[float] | None] = ContextVar("render_budget_left", default=None)


#: Characters (or list items) the render in progress has allocated so far, and its budget.
_allocated: ContextVar[list[int] | None] = ContextVar("render_allocated", default=None)


class TemplateRefused(Exception):
    """A template failed a static check, exceeded a budget, or hit the sandbox."""


@dataclass(frozen=True)
class RenderLimits:
    max_template_chars: int = 20_000
    max_rendered_chars: int = 100_000
    timeout_s: float = 1.0
    #: Characters (and list items) one render may build, all intermediate values together.
    memory_chars: int = 10_000_000


def _size(value: Any) -> int:
    """Characters of a value as a template sees it, without building its string form when
    that could be large (a container counts one per item plus its string items)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple):
        return len(value) + sum(len(v) for v in value if isinstance(v, str))
    return 16


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` to a call the environment sizes, like every other operator."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


#: String methods whose result is larger than their input, and how large it will be.
def _str_method_size(text: str, name: str, args: tuple[Any, ...],
                     kwargs: Mapping[str, Any]) -> int | None:
    """The result size of `text.name(*args)` before it runs; None if no more than `text`."""
    def arg(i: int, key: str, default: Any) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)

    if name in ("ljust", "rjust", "center", "zfill"):
        width = arg(0, "width", 0)
        return max(len(text), width if isinstance(width, int) else 0)
    if name == "expandtabs":
        tabsize = arg(0, "tabsize", 8)
        return len(text) + text.count("\t") * max(tabsize if isinstance(tabsize, int) else 0, 0)
    if name == "replace":
        old, new = arg(0, "old", ""), arg(1, "new", "")
        if not isinstance(old, str) or not isinstance(new, str):
            return len(text)
        hits = len(text) + 1 if old == "" else text.count(old)
        count = arg(2, "count", -1)
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        return len(text) + hits * max(len(new) - len(old), 0)
    if name == "encode":
        return 4 * len(text)
    return None


#: String methods refused outright: their result size depends on a table a template builds.
REFUSED_STR_METHODS = frozenset({"translate", "maketrans"})


def charge(size: int, what: str) -> None:
    """Count `size` characters against the render's memory budget; refuse past it. Outside a
    render (constant folding at compile time) the per-value bound alone applies."""
    allocated = _allocated.get()
    budget = allocated[1] if allocated is not None else RenderLimits.memory_chars
    total = size + (allocated[0] if allocated is not None else 0)
    if size > budget or total > budget:
        raise SecurityError(f"{what} would exceed the template memory budget of {budget} "
                            "characters")
    if allocated is not None:
        allocated[0] = total


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, limits: RenderLimits, **kwargs: Any):
        super().__init__(**kwargs)
        self.limits = limits

    def bounded_concat(self, parts: tuple[Any, ...]) -> str:
        """`a ~ b ~ ...`, sized first: repeated doubling is refused before it allocates."""
        charge(sum(_size(p) if isinstance(p, str) else len(str(p)) for p in parts), "'~'")
        return "".join(str(p) for p in parts)

    def call(__self, __context: Any, __obj: Any, *args: Any,
             **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str) and callable(__obj):
            if name in REFUSED_STR_METHODS:
                raise SecurityError(f"str.{name} is not allowed in templates")
            if name == "join":
                # Materialized once, to size it; the sandbox's range() bounds its length.
                items = list(args[0]) if args else []
                charge(len(items) + sum(_size(i) for i in items)
                       + max(len(items) - 1, 0) * len(owner), "str.join")
                args = (items, *args[1:])
            else:
                size = _str_method_size(owner, name, args, kwargs)
                charge(len(owner) if size is None else size, f"str.{name}")
        return super().call(__context, __obj, *args, **kwargs)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr in BLOCKED_ATTRIBUTES:
            return False
        return bool(super().is_safe_attribute(obj, attr, value))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        cap = self.limits.max_rendered_chars
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    if len(seq) * max(times, 0) > cap:
                        raise SecurityError("repetition would exceed the rendered-size limit")
                    charge(_size(seq) * max(times, 0), "'*'")
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                charge(_size(left) + _size(right), "'+'")
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


#: Characters that render as nothing: they hide a tag from an escape (`<\u200b/ticket>`).
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
#: Look-alikes of '<', '/' and '>' (full-width, small and mathematical forms) and the
#: characters they stand for.
_LOOKALIKES = str.maketrans({"\uff1c": "<", "\ufe64": "<", "\u2039": "<", "\u27e8": "<",
                             "\uff0f": "/", "\u2215": "/", "\u2044": "/",
                             "\uff1e": ">", "\ufe65": ">", "\u203a": ">", "\u27e9": ">"})
#: A closing tag in any spacing: `</x`, `< /x`, `<  / x`.
_CLOSING = re.compile(r"<\s*/")
#: Chat-template control tokens (ChatML, Llama, Gemma, Mistral) a model may obey as turns.
_SPECIAL = re.compile(r"<\|[^|<>]{0,40}\|>|</?(start_of_turn|end_of_turn|s|bos|eos)>"
                      r"|\[/?INST\]|\[/?SYS\]|<</?SYS>>", re.IGNORECASE)


def neutralize(value: Any) -> str:
    r"""Caller text made safe to place between tags: invisible characters removed, look-alike
    brackets normalized, every closing tag escaped (`<\/`), chat control tokens broken up
    (`<|im_end|>` -> `<\|im_end|>`), so no spelling of them ends the block or a turn."""
    text = _INVISIBLE.sub("", str(value)).translate(_LOOKALIKES)
    text = _SPECIAL.sub(lambda m: m.group(0)[0] + "\\" + m.group(0)[1:], text)
    return _CLOSING.sub("<\\/", text)


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
    width = _bounded_width(1000, "width")
    original = dict(filters)

    def replace(s: Any, old: str, new: str, count: int | None = None) -> Any:
        text = str(s)
        size = _str_method_size(text, "replace", (str(old), str(new),
                                                  -1 if count is None else count), {})
        charge(size or len(text), "replace")
        return text.replace(str(old), str(new), -1 if count is None else count)

    def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        items = list(value)  # materialized once, to size it (a string joins its characters)
        charge(len(items) + sum(len(str(i)) if not isinstance(i, list | tuple) else _size(i)
                                for i in items) + max(len(items) - 1, 0) * len(str(d)),
               "join")
        return original["join"](eval_ctx, items, d, attribute)

    def sized_lines(name: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        # indent and wordwrap add up to `width`/`wrapstring` per line of their input.
        @functools.wraps(inner)
        def call(*args: Any, **kwargs: Any) -> Any:
            text = args[1] if name == "wordwrap" else args[0]
            text = str(text)
            extra = max((len(str(v)) if isinstance(v, str) else v if isinstance(v, int) else 0)
                        for v in (*args[2 if name == "wordwrap" else 1:], *kwargs.values(), 0))
            charge(len(text) + (text.count("\n") + 1 + len(text) // 8) * extra, name)
            return inner(*args, **kwargs)
        return call

    def widthed(name: str) -> Callable[..., Any]:
        inner = original[name]

        @functools.wraps(inner)  # keeps jinja_pass_arg (wordwrap takes the environment)
        def call(*args: Any, **kwargs: Any) -> Any:
            for value in (*args[1:], *kwargs.values()):
                width(value)
            return inner(*args, **kwargs)
        return call

    filters["replace"] = replace
    filters["neutralize"] = neutralize
    for name in ("indent", "wordwrap"):
        original[name] = sized_lines(name, original[name])
    for name in ("center", "indent", "wordwrap", "batch", "slice", "truncate"):
        filters[name] = widthed(name)  # widths first: the clearer refusal
    filters["join"] = functools.wraps(original["join"])(join)
    env.filters = filters
    return env


def _interrupt(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(_RenderTimeout))


def _clear_interrupt(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


class _RenderTimeout(BaseException):
    """Injected into a render that ran past its deadline (a BaseException so templates can't
    swallow it)."""


class _Watchdog:
    """One daemon thread that interrupts renders running past their deadline.

    A timer thread per render would cost a thread start (and a wait for it) on every call.
    The thread sleeps until the earliest deadline it knows of; a render that registers an
    earlier one wakes it. Registration, release and interruption share one lock, so a render
    is only ever interrupted while it is still registered. The lock is a plain Lock used only
    in `with` blocks around C-level operations: an interrupt delivered while a render thread
    holds it still releases it (a Condition's Python-level __enter__ would not).
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # Also the after-fork hook: the child has no watchdog thread, and the lock may have
        # been held by it at the time of the fork.
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._active: dict[int, tuple[float, int]] = {}
        self._tokens = itertools.count()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    def watch(self, thread_id: int, deadline: float) -> int:
        """Interrupt `thread_id` at `deadline` unless released first; returns the token."""
        with self._lock:
            token = next(self._tokens)
            self._active[token] = (deadline, thread_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="render-watchdog",
                                                daemon=True)
                self._thread.start()
            if deadline < self._wake_at:
                self._wake_at = deadline
                self._wakeup.set()
        return token

    def release(self, token: int) -> bool:
        """Stop watching; True if the deadline had already fired an interrupt."""
        with self._lock:
            return self._active.pop(token, None) is None

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                nearest = math.inf
                for token, (deadline, thread_id) in list(self._active.items()):
                    if deadline <= now:
                        del self._active[token]
                        _interrupt(thread_id)
                    elif deadline < nearest:
                        nearest = deadline
                self._wake_at = nearest
                self._wakeup.clear()
            self._wakeup.wait(None if nearest == math.inf else nearest - now)


_watchdog = _Watchdog()


def run_with_deadline(fn: Callable[[], T], timeout: float) -> T:
    """Run `fn` in this thread, interrupting it if it runs longer than `timeout` seconds.

    Jinja compiles templates to Python bytecode, so a loop bomb is interrupted between
    bytecodes by an asynchronous exception, injected by the watchdog thread only while `fn`
    is registered. If the deadline fires just as `fn` finishes, the pending exception is
    withdrawn here and the render still counts as too slow, so none can leak to the caller.
    """
    thread_id = threading.get_ident()
    try:
        token = _watchdog.watch(thread_id, time.monotonic() + timeout)
        fired = False
        try:
            result = fn()
        finally:
            fired = _watchdog.release(token)
            if fired:
                _clear_interrupt(thread_id)
        if fired:
            raise _RenderTimeout
        return result
    except _RenderTimeout:
        raise TemplateRefused(f"rendering took longer than {timeout:g}s") from None


@dataclass(frozen=True)
class CompiledTemplate:
    source: str
    variables: frozenset[str]
    render_fn: Callable[[Mapping[str, Any]], Iterable[str]]
    #: Renders the same text for every input: it uses no input field and includes nothing
    #: (an included template's variables are not visible here), so it can be rendered once.
    constant: bool = False


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
        constant = not (referenced - ALLOWED_GLOBALS) and next(ast.find_all(
            (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)), None) is None
        try:
            template = self.env.from_string(ast)
        except TemplateError as exc:
            raise TemplateRefused(str(exc)) from None
        return CompiledTemplate(source, frozenset(referenced), template.generate, constant)

    def _check_nodes(self, ast: nodes.Template) -> None:
        for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Test,
                                  nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends,
                                  nodes.Name)):
            if isinstance(node, nodes.Name):
                # `self` is not reported as undeclared by Jinja, yet reaches template internals.
                if node.name in BLOCKED_NAMES and node.ctx == "load":
                    raise TemplateRefused(f"line {node.lineno}: {node.name!r} is not allowed "
                                          "in templates")
            elif isinstance(node, nodes.Getattr):
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

    @contextmanager
    def budget(self, seconds: float | None = None) -> Iterator[None]:
        """Renders inside this block share one allowance of render time (`seconds`, default
        the per-render timeout); what the block does between renders (compiling schemas and
        templates) is not charged to it. Nested budgets never extend an outer one, and what
        they spend is charged to it."""
        allowance = self.limits.timeout_s if seconds is None else seconds
        outer = _budget_left.get()
        left = [allowance if outer is None else min(outer[0], allowance)]
        granted = left[0]
        token = _budget_left.set(left)
        try:
            yield
        finally:
            _budget_left.reset(token)
            if outer is not None:
                outer[0] -= granted - left[0]

    def render(self, template: CompiledTemplate, context: Mapping[str, Any]) -> str:
        """Render with the output cap and deadline; raises TemplateRefused on any breach."""
        cap = self.limits.max_rendered_chars
        timeout = self.limits.timeout_s
        shared = _budget_left.get()
        if shared is not None:
            if shared[0] <= 0:
                raise TemplateRefused(f"the render budget of {self.limits.timeout_s:g}s for "
                                      "this prompt is used up")
            timeout = min(timeout, shared[0])

        def produce() -> str:
            budget = _allocated.set([0, self.limits.memory_chars])
            try:
                return collect()
            finally:
                _allocated.reset(budget)

        def collect() -> str:
            parts: list[str] = []
            size = 0
            for chunk in template.render_fn(context):
                size += len(chunk)
                if size > cap:
                    raise TemplateRefused(f"rendered prompt exceeds {cap} characters")
                parts.append(chunk)
            return "".join(parts)

        started = time.monotonic()
        try:
            return run_with_deadline(produce, timeout)
        except TemplateRefused as exc:
            if shared is not None and shared[0] - (time.monotonic() - started) <= 0:
                raise TemplateRefused(f"the render budget of {self.limits.timeout_s:g}s for "
                                      f"this prompt is used up ({exc})") from None
            raise
        except SecurityError as exc:
            raise TemplateRefused(f"refused by the sandbox: {exc}") from None
        except Exception as exc:
            # Whatever a template makes Python raise (LookupError from an unknown codec, ...)
            # is the template's fault, reported as such: never an unhandled error.
            raise TemplateRefused(f"rendering failed: {type(exc).__name__}: "
                                  f"{str(exc)[:200]}") from None
        finally:
            if shared is not None:
                shared[0] -= time.monotonic() - started
