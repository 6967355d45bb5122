"""`featurelm calls list|show` and `featurelm run --explain`: traced calls, told as a story a
person can follow (prompt, each attempt's reply and errors, timings, usage, output).

The CLI reads the tenant store directly, as an operator: every tenant's calls."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

INDENT = "    "


def _block(text: str, out: TextIO) -> None:
    for line in (text or "").splitlines() or [""]:
        print(INDENT + line, file=out)


def story(trace: Mapping[str, Any], out: TextIO = sys.stdout) -> None:
    """Print one trace (a stored trace's dict, or `Trace.as_dict()`) for a person."""
    override = trace.get("override_version")
    version = f"v{trace.get('feature_version')}" + (f", override v{override}" if override
                                                    else "")
    status = trace.get("status")
    print(f"call {trace.get('request_id')}: {trace.get('feature')} ({version}), tenant "
          f"{trace.get('tenant') or '-'}, route {trace.get('route') or '-'}: {status} in "
          f"{trace.get('latency_ms')} ms", file=out)
    stages = trace.get("stages_ms") or {}
    if stages:
        print("stages: " + ", ".join(f"{k} {v} ms" for k, v in stages.items()), file=out)
    flags = [name for name in ("cached", "coalesced", "truncated") if trace.get(name)]
    if flags:
        print("answered: " + ", ".join(flags), file=out)
    for message in trace.get("messages") or []:
        print(f"prompt [{message.get('role')}]:", file=out)
        _block(str(message.get("content", "")), out)
    for number, attempt in enumerate(trace.get("attempts") or [], 1):
        errors = attempt.get("errors") or []
        how = "re-ask, " if attempt.get("reask") else ""
        verdict = "valid" if not errors else f"{len(errors)} error(s)"
        repaired = ", JSON repaired" if attempt.get("repaired") else ""
        print(f"attempt {number} ({how}backend {attempt.get('backend')}): {verdict}{repaired}",
              file=out)
        print(f"{INDENT}reply:", file=out)
        _block(str(attempt.get("raw", "")), out)
        for error in errors:
            print(f"{INDENT}- {error}", file=out)
    for dispatch in trace.get("dispatches") or []:
        if dispatch.get("error"):
            print(f"backend {dispatch.get('backend')} failed after "
                  f"{dispatch.get('upstream_calls')} call(s): {dispatch.get('error')}", file=out)
    if trace.get("error"):
        error = trace["error"]
        print(f"error: {error.get('type')}: {error.get('detail')}", file=out)
    else:
        print("output: " + json.dumps(trace.get("output"), ensure_ascii=False), file=out)
    usage = trace.get("usage") or {}
    print(f"usage: {usage.get('tokens_in', 0)} tokens in, {usage.get('tokens_out', 0)} out, "
          f"${trace.get('cost_usd', 0)}", file=out)


async def calls_command(args: argparse.Namespace) -> int:
    from featurelm.engine.engine import Engine
    from featurelm.engine.traces import parse_since

    engine = Engine.from_config(args.config)
    try:
        store = await engine.store()
        if args.calls_command == "show":
            found = await store.calls(request_id=args.request_id, data=True)
            if not found:
                print(f"error: no traced call with request id {args.request_id!r}",
                      file=sys.stderr)
                return 2
            for number, summary in enumerate(found):
                trace = json.loads(summary.data or "{}")
                if args.json:
                    print(json.dumps(trace, ensure_ascii=False))
                    continue
                if number:
                    print()
                story(trace)
            return 0
        listed = await store.calls(feature=args.feature,
                                   **({"tenant": args.tenant} if args.tenant else {}),
                                   since=parse_since(args.since) if args.since else None,
                                   status=args.status, limit=args.limit)
        for c in listed:
            print(f"{c.created_at.isoformat(timespec='seconds')}\t{c.request_id}\t"
                  f"{c.tenant or '-'}\t{c.feature}\t{c.status}\t{c.latency_ms:.1f} ms")
        return 0
    finally:
        await engine.aclose()


async def explain(args: argparse.Namespace, options: Any) -> int:
    """`featurelm run --explain`: run the call traced, print its story, then the result."""
    from featurelm.engine.engine import Engine

    engine = Engine.from_config(args.config)
    try:
        feature = await engine.resolve(args.feature, args.tenant)
        result, trace = await engine.explain(feature, args.payload, tenant=args.tenant,
                                             options=options)
    finally:
        await engine.aclose()
    story(trace.as_dict(), sys.stderr)
    if result is None:
        return 1
    print(json.dumps({"output": result.output, "meta": result.meta.as_dict()},
                     ensure_ascii=False))
    return 0


def add_commands(commands: Any, config: argparse.ArgumentParser) -> None:
    """The `calls` command and its subcommands, on the CLI's subcommand parser."""
    calls = commands.add_parser("calls", help="read traced calls (traces: in featurelm.yaml)")
    sub = calls.add_subparsers(dest="calls_command", required=True)
    listing = sub.add_parser("list", parents=[config], help="traced calls, newest first")
    listing.add_argument("--feature")
    listing.add_argument("--tenant")
    listing.add_argument("--since", help="7d, 24h, 30m, 90s or an ISO 8601 time")
    listing.add_argument("--status", choices=["ok", "error"])
    listing.add_argument("--limit", type=int, default=50)
    show = sub.add_parser("show", parents=[config],
                          help="one call's trace as a story (prompt, replies, errors, timings)")
    show.add_argument("request_id")
    show.add_argument("--json", action="store_true", help="print the stored trace as JSON")
    import asyncio

    calls.set_defaults(handler=lambda a: asyncio.run(calls_command(a)))
