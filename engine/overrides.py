"""Tenant overrides: a restricted feature YAML merged onto the base feature, checked before use.

An override may change only the fields its feature lists in `overridable` (prompt wording,
examples, some model parameters); never the input or output schema, never file names. Each
save is checked exactly like a feature file (sandbox compile, examples against schemas),
rendered against the feature's example inputs and a sample input built from its input
schema, and optionally gated on the eval suite, before the store keeps it as a new version.
Resolution caches the merged feature per tenant and reloads when the store's generation
counter moves, so every replica converges within `refresh_s` seconds while calls in flight
keep the feature object they started with.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from featurelm.engine.config import EngineConfig
from featurelm.engine.errors import ContractError, ContractIssue, NotFoundError
from featurelm.engine.loader import FeatureRegistry, LoadedFeature, build_feature
from featurelm.engine.prompts import PromptRenderer, TemplateRefused
from featurelm.engine.safe_yaml import load_yaml_text
from featurelm.engine.sample_input import sample_input
from featurelm.engine.text import lone_surrogate_path

if TYPE_CHECKING:
    from featurelm.engine.store import OverrideVersion, Store

log = logging.getLogger("featurelm.overrides")
#: Longest a call waits for a generation check before using what it resolved before (s).
REFRESH_WAIT_S = 0.5

#: Runs a feature's eval cases against a candidate feature for a tenant; returns the pass rate.
EvalGate = Callable[[LoadedFeature, str], Awaitable[float]]

NEVER_OVERRIDABLE = {
    "input": "the input schema is the product's contract and cannot be overridden",
    "output": "the output schema is the product's contract and cannot be overridden",
    "name": "the feature name cannot be changed",
    "version": "the feature version is the operator's",
    "overridable": "which fields are overridable is the operator's decision",
    "prompt.system_file": "overrides cannot choose template files; write the template inline",
    "prompt.user_file": "overrides cannot choose template files; write the template inline",
    "model.allowed_routes": "the allowed routes are the operator's decision",
}


@dataclass(frozen=True)
class ApplyResult:
    version: int | None
    active: bool
    dry_run: bool
    #: Messages rendered for each example input, so a dry run shows the prompt.
    rendered: list[list[dict[str, str]]]
    eval_pass_rate: float | None


def _leaves(data: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{path}.")
        else:
            yield path


def _covered(path: str, allowed: set[str]) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1))


def _merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class Overrides:
    def __init__(self, config: EngineConfig, registry: FeatureRegistry, renderer: PromptRenderer,
                 store: Callable[[], Awaitable[Store]], *, refresh_s: float = 2.0,
                 eval_gate: EvalGate | None = None):
        self.config = config
        self.registry = registry
        self.renderer = renderer
        self._store = store
        self.refresh_s = refresh_s
        self.eval_gate = eval_gate
        self._resolved: dict[tuple[str, str], LoadedFeature] = {}
        self._generation: int | None = None
        self._checked_at = float("-inf")
        #: Bumped on every local invalidation, so a resolution that raced with one is not
        #: cached (it would otherwise serve the old version until the next generation change).
        self._epoch = 0
        self._refreshing: asyncio.Future[None] | None = None
        #: Tenants seen in the store; none is ever deleted, so a hit never goes stale.
        self._tenants: set[str] = set()

    async def require_tenant(self, tenant: str) -> None:
        """Raise NotFoundError unless `tenant` exists in the tenant store."""
        if tenant in self._tenants:
            return
        if await (await self._store()).get_tenant(tenant) is None:
            raise NotFoundError(f"unknown tenant {tenant!r} (create it with "
                                f"`featurelm tenant create {tenant}`)")
        self._tenants.add(tenant)

    def _base(self, feature: str) -> LoadedFeature:
        base = self.registry.get(feature)
        if base is None:
            raise NotFoundError(f"unknown feature {feature!r}")
        return base

    def build(self, tenant: str, feature: str, yaml_text: str,
              version: int | None = None) -> LoadedFeature:
        """Check an override text against its base feature and return the merged feature.

        Every render of the check shares one render budget, so a slow template times the
        number of examples cannot stall the worker for longer than one render deadline."""
        with self.renderer.budget():
            return self._build(tenant, feature, yaml_text, version)

    def _build(self, tenant: str, feature: str, yaml_text: str,
               version: int | None) -> LoadedFeature:
        base = self._base(feature)
        source = f"override {tenant}/{feature}" + (f" v{version}" if version else "")
        patch = load_yaml_text(yaml_text, source=source,
                               max_bytes=self.config.limits.max_yaml_bytes)
        if patch is None:
            patch = {}
        if not isinstance(patch, dict):
            raise ContractError([ContractIssue(source, "", "an override must be a YAML mapping",
                                               "write the fields to change, as in the feature")])
        # Checked before anything renders or is saved: such text fails every later encode.
        if (bad := lone_surrogate_path(patch, "")) is not None:
            raise ContractError([ContractIssue(
                source, bad.lstrip("."), "holds invalid Unicode (a lone surrogate such as "
                "\\ud800)", "write UTF-8 text; YAML escapes must form valid characters")])
        issues: list[ContractIssue] = []
        if patch.get("name", feature) != feature:
            issues.append(ContractIssue(source, "name", NEVER_OVERRIDABLE["name"],
                                        "remove the name or use the feature's own"))
        patch.pop("name", None)
        allowed: set[str] = set(base.spec.overridable)
        for path in _leaves(patch):
            reason = next((why for field, why in NEVER_OVERRIDABLE.items()
                           if path == field or path.startswith(field + ".")), None)
            if reason:
                issues.append(ContractIssue(source, path, reason, "remove it from the override"))
            elif not _covered(path, allowed):
                issues.append(ContractIssue(
                    source, path, f"{feature} does not allow overriding {path}",
                    f"overridable fields: {', '.join(sorted(allowed)) or 'none'}"))
        route = patch.get("model", {}).get("route") if isinstance(patch.get("model"), dict) \
            else None
        if route is not None and route not in base.allowed_routes():
            issues.append(ContractIssue(source, "model.route", f"route {route!r} is not allowed",
                                        f"choose one of: {', '.join(base.allowed_routes())}"))
        if issues:
            raise ContractError(issues)
        merged = _merge(base.spec.model_dump(mode="json", exclude_none=True), patch)
        for turn in ("system", "user"):
            # An inline template in the override replaces the base feature's template file.
            if turn in patch.get("prompt", {}):
                merged["prompt"].pop(f"{turn}_file", None)
        candidate = build_feature(merged, source=source, config=self.config,
                                  renderer=self.renderer, override_version=version)
        # The override must also work for the inputs the base feature was written for, and
        # render the whole conversation (system turn included) within the size/time caps;
        # then for inputs unlike the examples: every optional field set, longer arrays.
        inputs = [e.input for e in base.spec.examples] + [e.input for e in
                                                          candidate.spec.examples]
        checks = [(f"the feature's example {i}", example_input, "fix the template")
                  for i, example_input in enumerate(inputs)]
        if (sample := sample_input(base.spec.input)) is not None:
            checks.append((
                "a sample input built from the input schema "
                f"({json.dumps(sample, ensure_ascii=False)[:300]})", sample,
                "fix the template (optional fields may be absent or present, arrays of any "
                "length the schema allows)"))
        for what, check_input, fix in checks:
            try:
                candidate.render_messages(self.renderer, check_input)
            except TemplateRefused as exc:
                raise ContractError([ContractIssue(
                    source, "prompt", f"does not render for {what}: {exc}", fix)]) from None
        return candidate

    def _rendered(self, candidate: LoadedFeature) -> list[list[dict[str, str]]]:
        base = self._base(candidate.name)
        inputs = [e.input for e in base.spec.examples] or [e.input for e in
                                                             candidate.spec.examples]
        try:
            with self.renderer.budget():
                return [[{"role": m.role, "content": m.content}
                         for m in candidate.render_messages(self.renderer, i)] for i in inputs]
        except TemplateRefused as exc:
            raise ContractError([ContractIssue(candidate.source, "prompt", str(exc),
                                               "fix the template")]) from None

    async def apply(self, tenant: str, feature: str, yaml_text: str, *, author: str,
                    dry_run: bool = False, activate: bool = True,
                    run_evals: bool = False) -> ApplyResult:
        """Validate an override and, unless `dry_run`, keep it as a new (active) version."""
        store = await self._store()
        if await store.get_tenant(tenant) is None:
            raise NotFoundError(f"unknown tenant {tenant!r}")
        # Rendering is CPU work bounded by the render budget: off the event loop, so a
        # tenant's slow template never delays other requests.
        candidate = await asyncio.to_thread(self.build, tenant, feature, yaml_text)
        rendered = await asyncio.to_thread(self._rendered, candidate)
        pass_rate = None
        if run_evals:
            if self.eval_gate is None:
                raise ContractError([ContractIssue(f"override {tenant}/{feature}", "evals",
                                                   "eval gating is not available here",
                                                   "install featurelm's evals")])
            pass_rate = await self.eval_gate(candidate, tenant)
            threshold = candidate.spec.evals.threshold
            if pass_rate < threshold:
                raise ContractError([ContractIssue(
                    f"override {tenant}/{feature}", "evals",
                    f"eval pass rate {pass_rate:.0%} is below the threshold {threshold:.0%}",
                    "improve the override until its eval cases pass")])
        if dry_run:
            return ApplyResult(None, False, True, rendered, pass_rate)
        saved = await store.save_override(tenant, feature, yaml_text, author=author,
                                          activate=activate)
        self._forget(tenant, feature)
        return ApplyResult(saved.version, saved.active, False, rendered, pass_rate)

    async def list_versions(self, tenant: str,
                            feature: str | None = None) -> list[OverrideVersion]:
        versions: list[OverrideVersion] = await (await self._store()).list_versions(tenant,
                                                                                     feature)
        return versions

    async def activate(self, tenant: str, feature: str, version: int, *,
                       author: str) -> OverrideVersion:
        return await self._switch(tenant, feature, version, author, "activate")

    async def rollback(self, tenant: str, feature: str, version: int, *,
                       author: str) -> OverrideVersion:
        return await self._switch(tenant, feature, version, author, "rollback")

    async def _switch(self, tenant: str, feature: str, version: int, author: str,
                      action: Literal["activate", "rollback"]) -> OverrideVersion:
        store = await self._store()
        stored = await store.get_version(tenant, feature, version)
        if stored is None:
            raise NotFoundError(f"tenant {tenant!r} has no version {version} of {feature!r}")
        # Re-check against today's base feature: it may have changed since the save.
        await asyncio.to_thread(self.build, tenant, feature, stored.yaml_text, version)
        switched = await store.activate(tenant, feature, version, author=author,
                                        action=action)
        self._forget(tenant, feature)
        return switched

    async def deactivate(self, tenant: str, feature: str, *, author: str) -> None:
        await (await self._store()).deactivate(tenant, feature, author=author)
        self._forget(tenant, feature)

    async def diff(self, tenant: str, feature: str, v1: int, v2: int) -> str:
        store = await self._store()
        texts = []
        for version in (v1, v2):
            stored = await store.get_version(tenant, feature, version)
            if stored is None:
                raise NotFoundError(f"tenant {tenant!r} has no version {version} of {feature!r}")
            texts.append(stored.yaml_text.splitlines(keepends=True))
        return "".join(difflib.unified_diff(texts[0], texts[1], f"{feature} v{v1}",
                                            f"{feature} v{v2}"))

    def _forget(self, tenant: str, feature: str) -> None:
        self._epoch += 1
        self._resolved.pop((tenant, feature), None)

    async def _refresh(self) -> None:
        """Drop resolved features when another replica changed an active version.

        One check runs at a time, shared by every call that finds the last one too old; a
        call waits for it at most REFRESH_WAIT_S and otherwise goes on with what this replica
        resolved before, so a slow store delays no call that needs nothing new from it."""
        if time.monotonic() - self._checked_at < self.refresh_s:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._check_generation())
        await asyncio.wait([self._refreshing], timeout=REFRESH_WAIT_S)

    async def _check_generation(self) -> None:
        try:
            generation = await (await self._store()).generation()
        except Exception as exc:
            log.warning("override refresh failed, keeping the resolved overrides: %s",
                        type(exc).__name__)
            self._checked_at = time.monotonic()  # try again after refresh_s, not per call
            return
        if generation != self._generation:
            self._epoch += 1
            self._resolved.clear()
            self._generation = generation
        self._checked_at = time.monotonic()

    async def resolve(self, feature: str, tenant: str | None) -> LoadedFeature:
        """The feature as `tenant` sees it: the base feature with its active override merged."""
        base = self._base(feature)
        if tenant is None:
            return base
        # A mistyped tenant must not quietly run the base feature.
        await self.require_tenant(tenant)
        if not base.spec.overridable:
            return base
        await self._refresh()
        cached = self._resolved.get((tenant, feature))
        if cached is not None:
            return cached
        epoch = self._epoch
        store = await self._store()
        active = await store.active_override(tenant, feature)
        resolved = base
        if active is not None:
            try:
                resolved = await asyncio.to_thread(self.build, tenant, feature,
                                                   active.yaml_text, active.version)
            except ContractError as exc:
                # The operator changed the base feature since this version was checked: the
                # product keeps working on the base feature until the tenant fixes it.
                log.warning("override %s/%s v%d no longer applies, serving the base feature: "
                            "%s", tenant, feature, active.version, exc.issues[0])
        if epoch == self._epoch:
            self._resolved[(tenant, feature)] = resolved
        return resolved
