"""Row 7: real-world schemas as output contracts on the local backend, before and after.

After: every corpus schema classified as `featurelm check` does (bench/schema_corpus.py):
constrained by an llguidance grammar, degraded to validate + repair + re-ask, or refused with
one line; grammar compile times; and the mask's time per token against a token of
unconstrained decoding on the packaged model. Before: llama-cpp-python's own converter over
the same corpus (bench/llama_converter.py), each schema in a forked child, crashes counted.
"""

from __future__ import annotations

import collections
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.report import Row, ratio_row, unavailable
from bench.schema_corpus import classify_all, shares

HERE = Path(__file__).resolve().parent
SHARE_WHAT = "corpus schemas constrained on the local backend / schemas accepted by check"
MASK_WHAT = "grammar mask time per token / unconstrained decoding time per token"
def before(k8s_step: int, timeout_s: float = 900.0) -> collections.Counter[str]:
    """llama.cpp converter outcomes over the corpus: compiled, failed, crashed."""
    done = subprocess.run([sys.executable, str(HERE / "llama_converter.py"), str(k8s_step)],
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    counts = collections.Counter(json.loads(line)["status"] for line in done.stdout.splitlines()
                                 if line.startswith("{"))
    if done.returncode != 0:
        counts["crashed"] += 1  # the parent itself died: at least one more crash
    return counts


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def corpus_rows(k8s_step: int) -> list[Row]:
    outcomes, tail = classify_all(k8s_step)
    if not outcomes:
        return [unavailable("7a", SHARE_WHAT, ">= 0.90", f"the corpus run failed: {tail[-200:]}")]
    s = shares(outcomes)
    old = before(k8s_step)
    times = [o.compile_s * 1000 for o in outcomes if o.status != "refused"] or [0.0]
    # A schema that killed the classifier's process left no outcome (the converter run
    # counted the whole corpus).
    crashed = max(0, sum(old.values()) - len(outcomes))
    detail = (f"after (llguidance): {s.total} schemas, {s.valid_objects} valid object "
              f"schemas, {s.accepted} accepted ({s.accepted_valid / max(s.valid_objects, 1):.1%}"
              f" of valid), {s.constrained} constrained ({s.partly} leave keywords to the "
              f"validator), {s.degraded} degraded, {s.refused} refused, {crashed} crashed; "
              f"compile median {statistics.median(times):.1f} ms, p99 {_p99(times):.1f} ms, "
              f"max {max(times):.0f} ms. before (llama.cpp converter): {old['compiled']} "
              f"compiled, {old['failed']} failed, {old['crashed']} crashed, of "
              f"{sum(old.values())}")
    value = s.constrained / max(s.accepted, 1)
    return [ratio_row("7a", SHARE_WHAT, ">= 0.90", value, lambda r: r >= 0.90, detail,
                      fmt="{:.3f}")]


def mask_row(calls: int, timeout_s: float = 600.0) -> Row:
    """Mask seconds per generated token over unconstrained seconds per generated token."""
    done = subprocess.run([sys.executable, str(HERE / "mask_timing.py"), str(calls)],
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        return unavailable("7b", MASK_WHAT, "<= 0.25", done.stderr.strip()[-200:])
    m = json.loads(done.stdout.splitlines()[-1])
    per_plain = m["plain_s"] / max(m["plain_tokens"], 1)
    per_mask = m["mask_s"] / max(m["steps"], 1)
    return ratio_row("7b", MASK_WHAT, "<= 0.25", per_mask / per_plain, lambda r: r <= 0.25,
                     f"mask {per_mask * 1000:.2f} ms/token over {m['steps']} masked tokens; "
                     f"unconstrained {per_plain * 1000:.2f} ms/token over {m['plain_tokens']} "
                     "tokens (Gemma 3 270M, llama.cpp, n_ctx 1024)", fmt="{:.3f}")


def main() -> int:
    """`python -m bench.grammar_rows [k8s_step]`: row 7 alone, as the table prints it."""
    from bench.report import render

    step = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    rows = [*corpus_rows(step), mask_row(3)]
    print(render(rows, header=["featurelm bench, row 7 only"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
