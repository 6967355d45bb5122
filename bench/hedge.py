"""`.venv/bin/python bench/hedge.py`: what hedged requests (`routes.<name>.hedge_after_ms`)
buy on a backend with a slow tail, measured side by side in one run.

Backend A answers in 50 ms, except a fixed 10% of calls (drawn from a seeded plan) that take
3 s; backend B, next on the route, always answers in 50 ms. Both are the packaged
fault-injecting OpenAI-compatible server over real HTTP, called through the dispatcher.
Each variant starts the same calls at the same fixed rate: (a) the route as today, (b) with
`hedge_after_ms`. It prints p50/p99/max latency and the requests each
backend received, and the ratios of (b) to (a).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass

from featurelm.engine.backends.openai_compat import OpenAICompatBackend
from featurelm.engine.config import RouteConfig
from featurelm.engine.dispatch import Dispatcher
from featurelm.engine.testing import Fault, FaultPlan, FaultServer
from featurelm.engine.types import CompletionRequest, Message

REQUEST = CompletionRequest(messages=(Message("user", "Where is my parcel?"),), max_tokens=32)


@dataclass(frozen=True)
class Result:
    name: str
    latencies: list[float]
    upstream_a: int
    upstream_b: int

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def upstream(self) -> int:
        return self.upstream_a + self.upstream_b


async def run(name: str, hedge_after_ms: int | None, args: argparse.Namespace) -> Result:
    plan = FaultPlan(rates=[(args.slow_share, Fault.ok(delay=args.slow_s))], seed=args.seed)
    with FaultServer(plan, latency=args.latency_s) as a, \
            FaultServer(latency=args.latency_s) as b:
        backends = {n: OpenAICompatBackend(n, model=f"model-{n}", base_urls=[s.url])
                    for n, s in (("a", a), ("b", b))}
        route = RouteConfig(backends=["a", "b"], hedge_after_ms=hedge_after_ms)
        dispatcher = Dispatcher(backends, {"main": route})
        latencies: list[float] = []
        began = time.perf_counter()

        async def call(n: int) -> None:
            # Open loop: call n starts at n / rate whatever the others do, so every variant
            # gets the same offered load (a closed loop would load a faster variant more).
            await asyncio.sleep(max(0.0, began + n / args.rate - time.perf_counter()))
            started = time.perf_counter()
            await dispatcher.complete("main", REQUEST, deadline=time.monotonic() + 30)
            latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(call(n) for n in range(args.calls)))
        for backend in backends.values():
            await backend.aclose()
        return Result(name, latencies, a.completions, b.completions)


def report(results: list[Result], calls: int) -> None:
    print(f"{'variant':<28}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'mean ms':>9}{'to A':>7}{'to B':>7}{'per call':>10}")
    for r in results:
        print(f"{r.name:<28}{r.quantile(0.5) * 1000:>9.0f}{r.quantile(0.9) * 1000:>9.0f}"
              f"{r.quantile(0.99) * 1000:>9.0f}{max(r.latencies) * 1000:>9.0f}"
              f"{statistics.mean(r.latencies) * 1000:>9.0f}{r.upstream_a:>7}{r.upstream_b:>7}"
              f"{r.upstream / calls:>10.2f}")
    base = results[0]
    for r in results[1:]:
        print(f"{r.name} / {base.name}: p50 x{r.quantile(0.5) / base.quantile(0.5):.2f}, "
              f"p99 x{r.quantile(0.99) / base.quantile(0.99):.2f}, "
              f"upstream requests x{r.upstream / base.upstream:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/hedge.py", description=__doc__)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rate", type=float, default=40.0, help="calls started per second")
    parser.add_argument("--latency-s", type=float, default=0.05)
    parser.add_argument("--slow-share", type=float, default=0.10)
    parser.add_argument("--slow-s", type=float, default=2.95, help="added to the latency")
    parser.add_argument("--hedge-after-ms", type=int, nargs="+", default=[100, 250])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    results = [asyncio.run(run("(a) no hedge", None, args))]
    for after in args.hedge_after_ms:
        results.append(asyncio.run(run(f"(b) hedge_after_ms={after}", after, args)))
    report(results, args.calls)


if __name__ == "__main__":
    main()
