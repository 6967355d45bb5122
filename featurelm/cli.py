"""The `featurelm` command line: the composition root that wires engine, serving and evals.

Serving and evals load only in the commands that use them, so a plain install (no extras)
runs every command; an optional part that is missing is named in one line with its extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featurelm.engine.errors import ContractError, FeaturelmError, InputError, NotFoundError

CONFIG_HELP = ("featurelm.yaml to use (default: $FEATURELM_CONFIG, then ./featurelm.yaml, "
               "then built-in defaults); accepted before or after the command")


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InputError(f"cannot read {path}: {reason}") from None


def _read_input(value: str) -> Any:
    """`--input` takes inline JSON or @path to a JSON file."""
    text = _read_file(Path(value[1:])) if value.startswith("@") else value
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"--input is not valid JSON: {exc}") from None


def _print_error(exc: FeaturelmError, *, one_line: bool = False) -> None:
    if one_line:
        # Tenant and override commands are scripted: one line a script can show or grep.
        text = "; ".join(str(i) for i in exc.issues) if isinstance(exc, ContractError) \
            else str(exc)
        print("error: " + " ".join(text.split()), file=sys.stderr)
        return
    if isinstance(exc, ContractError):
        print(f"error: {len(exc.issues)} problem(s) found:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return
    print(f"error: {exc}", file=sys.stderr)
    if isinstance(exc, InputError):
        for violation in exc.violations:
            print(f"  {violation.path}: {violation.message}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    from featurelm.engine.engine import Engine

    engine = Engine.from_config(args.config)
    names = engine.feature_names()
    print(f"ok: {len(names)} feature(s): {', '.join(names)}")
    from featurelm.engine.capability import degraded_plans

    for plan in degraded_plans(engine.route_plans):
        print(f"warning: {plan}", file=sys.stderr)
    # Eval datasets are for `featurelm eval`, not for serving: a missing one is only a warning.
    from featurelm.evals.harness import missing_datasets

    for feature, path in missing_datasets(engine):
        print(f"warning: {feature}: eval dataset {path} not found (featurelm eval will refuse "
              "it; serving does not need it)", file=sys.stderr)
    # Cases are checked under the feature's own rules; still the dataset's problems, not the
    # feature's: serving never reads them.
    from featurelm.evals.dataset_check import check_datasets

    for issue in check_datasets(engine):
        print(f"warning: eval dataset: {issue}", file=sys.stderr)
    return 0


async def _run(args: argparse.Namespace) -> int:
    from featurelm.engine.engine import Engine, RunOptions

    payload = _read_input(args.input)
    if args.explain:
        from featurelm.calls import explain

        args.payload = payload
        return await explain(args, RunOptions(route=args.route, cache_read=not args.no_cache))
    engine = Engine.from_config(args.config)
    try:
        options = RunOptions(route=args.route, cache_read=not args.no_cache)
        result = await engine.run(args.feature, payload, tenant=args.tenant, options=options)
    finally:
        await engine.aclose()
    print(json.dumps({"output": result.output, "meta": result.meta.as_dict()}, ensure_ascii=False))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from featurelm.engine.contracts import FeatureSpec

    schema = FeatureSpec.model_json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "title": "featurelm feature file", **schema}
    print(json.dumps(schema, indent=2, sort_keys=True))
    return 0


async def _tenant(args: argparse.Namespace) -> int:
    from featurelm.engine.engine import Engine

    engine = Engine.from_config(args.config)
    try:
        store = await engine.store()
        if args.tenant_command == "create":
            tenant, key = await store.create_tenant(args.name, actor=args.author)
            print(f"created tenant {tenant.name}")
            print(f"api key (shown once, store it now): {key}")
        elif args.tenant_command == "admin-key":
            key = await store.create_admin_key(actor=args.author)
            print(f"admin key (shown once, store it now): {key}")
        else:
            for tenant in await store.list_tenants():
                print(f"{tenant.name}\t{tenant.created_at.isoformat()}")
    finally:
        await engine.aclose()
    return 0


async def _override(args: argparse.Namespace) -> int:
    from featurelm.engine.engine import Engine

    engine = Engine.from_config(args.config)
    if args.override_command in ("check", "schema"):
        try:
            return _override_offline(args, engine)
        finally:
            await engine.aclose()
    if getattr(args, "evals", False):
        from featurelm.evals.gate import make_eval_gate

        engine.set_eval_gate(make_eval_gate(engine))
    overrides = engine.overrides
    try:
        if args.override_command == "apply":
            path = Path(args.file)
            text = _read_file(path)
            try:
                result = await overrides.apply(args.tenant, args.feature, text,
                                               author=args.author, dry_run=args.dry_run,
                                               run_evals=args.evals)
            except ContractError as exc:
                return _refused(exc, text, path)
            if result.dry_run:
                print("ok: the override is valid (dry run, nothing saved)")
                for i, messages in enumerate(result.rendered):
                    print(f"--- rendered prompt for example {i}")
                    for message in messages:
                        print(f"[{message['role']}] {message['content']}")
            else:
                state = "active" if result.active else "saved, not active"
                print(f"ok: {args.tenant}/{args.feature} version {result.version} ({state})")
            if result.eval_pass_rate is not None:
                print(f"eval pass rate: {result.eval_pass_rate:.0%}")
        elif args.override_command == "list":
            versions = await overrides.list_versions(args.tenant, args.feature)
            if not versions:
                print(f"{args.tenant} has no override versions" +
                      (f" of {args.feature}" if args.feature else ""))
            for v in versions:
                mark = "*" if v.active else " "
                print(f"{mark} {v.feature}\tv{v.version}\t{v.created_at.isoformat()}\t"
                      f"{v.author}\t{v.content_hash[:12]}")
        elif args.override_command == "rollback":
            await overrides.rollback(args.tenant, args.feature, args.version, author=args.author)
            print(f"ok: {args.tenant}/{args.feature} rolled back to version {args.version}")
        elif args.override_command == "activate":
            await overrides.activate(args.tenant, args.feature, args.version, author=args.author)
            print(f"ok: {args.tenant}/{args.feature} version {args.version} is active")
        elif args.override_command == "deactivate":
            await overrides.deactivate(args.tenant, args.feature, author=args.author)
            print(f"ok: {args.tenant}/{args.feature} serves the base feature")
        elif args.override_command == "diff":
            print(await overrides.diff(args.tenant, args.feature, args.v1, args.v2), end="")
    finally:
        await engine.aclose()
    return 0


def _refused(exc: ContractError, text: str, path: Path) -> int:
    """Each problem of a refused override on its own line, naming the tenant's file (not the
    engine's `override TENANT/FEATURE`), with the line and YAML path where they are known."""
    from featurelm.engine.override_check import located

    for problem in located(exc.issues, text, file=str(path)):
        print("error: " + " ".join(str(problem).split()), file=sys.stderr)
    return 2


def _override_offline(args: argparse.Namespace, engine: Any) -> int:
    """`override check` and `override schema`: no store, no model."""
    from featurelm.engine.override_check import check_override, feature_of
    from featurelm.engine.override_schema import override_schema
    from featurelm.engine.safe_yaml import load_yaml_text

    if args.override_command == "schema":
        feature = engine.feature(args.feature)
        if feature is None:
            raise NotFoundError(f"unknown feature {args.feature!r}")
        print(json.dumps(override_schema(feature.spec), indent=2, ensure_ascii=False))
        return 0
    path = Path(args.file)
    text = _read_file(path)
    name = args.feature
    if name is None:
        try:
            data = load_yaml_text(text, source=str(path), max_bytes=1 << 20)
        except ContractError:
            data = None
        name = feature_of(path, data, engine.feature_names())
    if name is None:
        raise InputError(f"{path}: cannot tell which feature this override is for: pass "
                         "--feature NAME, add `name: FEATURE` or name the file FEATURE.yaml")
    problems = check_override(engine.overrides, name, text, file=str(path))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{path}: {len(problems)} problem(s) in this override of {name}", file=sys.stderr)
        return 2
    print(f"ok: {path} is a valid override of {name}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    from featurelm.engine.engine import Engine
    from featurelm.evals.gate import make_eval_gate
    from featurelm.serving.server import serve

    def prepare(engine: Engine) -> None:
        from featurelm.engine.capability import degraded_plans

        for plan in degraded_plans(engine.route_plans):
            logging.getLogger("featurelm.serving").warning("%s", plan)
        # The admin API's `run_evals=true` gates an override on the feature's eval cases.
        engine.set_eval_gate(make_eval_gate(engine))

    return serve(config=args.config, host=args.host, port=args.port, prepare=prepare,
                 workers=args.workers)


def _eval(args: argparse.Namespace) -> int:
    from featurelm.evals import cli as evals_cli

    return asyncio.run(evals_cli.run(args))


class _Commands:
    """Subcommand parsers that all accept the shared options (--config)."""

    def __init__(self, commands: Any, shared: argparse.ArgumentParser):
        self.commands = commands
        self.shared = shared

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.commands.add_parser(
            name, parents=[self.shared], **kwargs)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featurelm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=CONFIG_HELP)
    # Every (sub)command takes --config too; SUPPRESS keeps a value given before the command
    # from being reset by the subcommand's default.
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    commands = _Commands(parser.add_subparsers(dest="command", required=True), config)

    check = commands.add_parser("check", help="load and validate every feature")
    check.set_defaults(handler=cmd_check)

    run = commands.add_parser("run", help="run one feature and print {output, meta} as JSON")
    run.add_argument("feature")
    run.add_argument("--input", required=True, help="input JSON, or @file.json")
    run.add_argument("--tenant", help="run as this tenant (with its active override)")
    run.add_argument("--route", help="another route from the feature's allowed list")
    run.add_argument("--no-cache", action="store_true", help="skip the cache read")
    run.add_argument("--explain", action="store_true",
                     help="also print the call's trace on stderr: prompt, each reply and its "
                          "errors, re-asks, timings (stores nothing)")
    run.set_defaults(handler=lambda a: asyncio.run(_run(a)))

    schema = commands.add_parser("schema", help="print the JSON Schema of a feature file")
    schema.set_defaults(handler=cmd_schema)

    # --author may come before or after the subcommand; SUPPRESS keeps the subcommand's
    # default from overwriting a value given before it.
    author = argparse.ArgumentParser(add_help=False, parents=[config])
    author.add_argument("--author", default=argparse.SUPPRESS,
                        help="who is acting, for the audit log (default: cli)")
    tenant = commands.add_parser("tenant", help="manage tenants and API keys")
    tenant.add_argument("--author", default="cli", help="who is acting (audit log)")
    tenant_commands = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tenant_commands.add_parser("create", parents=[author],
                                        help="create a tenant; prints its API key once")
    create.add_argument("name")
    tenant_commands.add_parser("list", parents=[config], help="list tenants")
    tenant_commands.add_parser("admin-key", parents=[author],
                               help="create an operator key for the admin API")
    tenant.set_defaults(handler=lambda a: asyncio.run(_tenant(a)))

    override = commands.add_parser("override", help="manage tenant feature overrides")
    override.add_argument("--author", default="cli", help="who is acting (audit log)")
    override_commands = override.add_subparsers(dest="override_command", required=True)
    apply = override_commands.add_parser("apply", parents=[author],
                                         help="validate and activate an override file")
    apply.add_argument("tenant")
    apply.add_argument("feature")
    apply.add_argument("file")
    apply.add_argument("--dry-run", action="store_true",
                       help="validate and show the rendered prompt; save nothing")
    apply.add_argument("--evals", action="store_true",
                       help="refuse activation if the feature's eval cases fall below threshold")
    listing = override_commands.add_parser("list", parents=[config],
                                           help="list versions (* = active)")
    listing.add_argument("tenant")
    listing.add_argument("feature", nargs="?")
    for verb, text in (("rollback", "make an earlier version active again"),
                       ("activate", "make a saved version active")):
        sub = override_commands.add_parser(verb, parents=[author], help=text)
        sub.add_argument("tenant")
        sub.add_argument("feature")
        sub.add_argument("version", type=int)
    deactivate = override_commands.add_parser("deactivate", parents=[author],
                                              help="serve the base feature again")
    deactivate.add_argument("tenant")
    deactivate.add_argument("feature")
    diff = override_commands.add_parser("diff", parents=[config],
                                        help="unified diff of two versions")
    diff.add_argument("tenant")
    diff.add_argument("feature")
    diff.add_argument("v1", type=int)
    diff.add_argument("v2", type=int)
    check = override_commands.add_parser(
        "check", parents=[config],
        help="validate an override file offline; lists every problem with its line")
    check.add_argument("file")
    check.add_argument("--feature", help="the feature it overrides (default: the file's "
                                         "`name:`, or a file name ending in the feature's)")
    schema = override_commands.add_parser(
        "schema", parents=[config], help="print the JSON Schema of a feature's override files")
    schema.add_argument("feature")
    override.set_defaults(handler=lambda a: asyncio.run(_override(a)))

    from featurelm import calls as calls_cli

    calls_cli.add_commands(commands, config)
    from featurelm.evals import production

    production.add_commands(commands, config)
    from featurelm.evals import drift

    drift.add_commands(commands, config)

    evaluate = commands.add_parser("eval", help="run the offline eval suite")
    from featurelm.evals import arguments as eval_arguments

    eval_arguments.add_arguments(evaluate)
    evaluate.set_defaults(handler=_eval)

    serve = commands.add_parser("serve", help="serve every feature over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=_positive_int, default=1,
                       help="processes sharing the port, one core each (default 1; see "
                            "docs/deploy.md, Sizing)")
    serve.set_defaults(handler=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except FeaturelmError as exc:
        _print_error(exc, one_line=args.command in ("tenant", "override"))
        return 2 if isinstance(exc, InputError | ContractError | NotFoundError) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
