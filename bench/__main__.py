"""`python -m bench` (`make bench`): run every benchmark and print one table of ratios."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench import grammar_rows, litellm_venv, rows, scale
from bench.harness import Harness, Server
from bench.procs import pin_self
from bench.report import Row, load_average, machine, render, today

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a few calls per row: checks the harness, measures nothing")
    parser.add_argument("--no-litellm", action="store_true",
                        help="skip the LiteLLM proxy (its rows show 'not available')")
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis for rows 3 and 4")
    parser.add_argument("--only", default="", help="comma-separated row numbers, e.g. 1,3")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the temp dir with configs and server logs")
    return parser.parse_args()


async def measure(h: Harness, args: argparse.Namespace, sizes: rows.Sizes,
                  notes: list[str], scale_sizes: scale.ScaleSizes) -> list[Row]:
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}

    def on(row: str) -> bool:
        return not wanted or row in wanted

    h.start_mock()
    bin_dir = None
    if not args.no_litellm and (on("1") or on("2") or on("5") or on("9")):
        bin_dir = litellm_venv.ensure_venv(h.root / "litellm-install.log")
        notes.append(f"LiteLLM {litellm_venv.version(bin_dir)} (proxy, 1 uvicorn worker)")
    out: list[Row] = []
    fl: Server | None = None
    ll: Server | None = None
    if on("1") or on("2") or on("6"):
        fl = h.start_featurelm("featurelm")
    if bin_dir is not None and (on("1") or on("2") or on("9")):
        ll = h.start_litellm(bin_dir)
        notes.append(f"LiteLLM proxy ready in {ll.ready_s:.1f} s, {ll.rss_mib:.0f} MiB RSS")
    if fl is not None and on("1"):
        out += await rows.overhead(h, fl, ll, sizes)
    if fl is not None and on("2"):
        out += await rows.throughput(h, fl, ll, sizes)
    if on("9"):
        out += await scale.concurrency(h, ll, scale_sizes)
    if ll is not None:
        h.stop(ll)
    if on("3") or on("4"):
        cache = await rows.cache_rows(h, args.redis, sizes)
        out += [r for r in cache if on(r.key)]
    if on("5"):
        python = bin_dir / "python" if bin_dir is not None else None
        out += await rows.cold_start(h, python, litellm_venv.ENV, sizes)
    if on("10"):
        out += await scale.streams(h, scale_sizes)
    if on("11"):
        out += await scale.workers(h, scale_sizes)
    if fl is not None and on("6"):
        out += await rows.structured(h, fl, sizes)
    if on("7"):
        # In a thread: the corpus runs in child processes the bench waits for.
        out += await asyncio.to_thread(grammar_rows.corpus_rows, sizes.corpus_k8s_step)
        out.append(await asyncio.to_thread(grammar_rows.mask_row, sizes.mask_calls))
    if on("8"):
        out += await rows.tracing(h, sizes)
    return out


def main() -> int:
    args = parse_args()
    h = Harness()
    # The client (this process) shares the mock's core; each gateway gets the other core.
    pin_self(h.cores.client)
    sizes = rows.Sizes.quick() if args.quick else rows.Sizes()
    scale_sizes = scale.ScaleSizes.quick() if args.quick else scale.ScaleSizes()
    open_files = scale.raise_open_files()
    notes: list[str] = []
    started = time.perf_counter()
    try:
        try:
            import uvloop

            result = uvloop.run(measure(h, args, sizes, notes, scale_sizes))
        except ImportError:
            result = asyncio.run(measure(h, args, sizes, notes, scale_sizes))
    except BaseException:
        print(f"bench failed; configs and server logs kept in {h.root}", file=sys.stderr)
        h.close(keep_logs=True)
        raise
    h.close(keep_logs=args.keep_logs)
    header = [
        f"featurelm bench, {today()}, {'QUICK (not a measurement)' if args.quick else 'full'}",
        f"machine: {machine()}; load average {load_average()}; open files {open_files}",
        f"cores: mock + client on {h.cores.mock}, gateway on {h.cores.gateway}; "
        f"{'; '.join(notes) or 'LiteLLM not run'}; took {time.perf_counter() - started:.0f} s",
    ]
    print(render(result, header=header))
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": [
            {**asdict(r), "verdict": r.verdict} for r in result]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
