"""Eval progress on the terminal: a tqdm bar on stderr when it is a TTY and tqdm is installed
(the `evals` extra), and one summary line per feature on stdout either way (so CI logs show
results without bar noise)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from featurelm.evals.results import FeatureResult

if TYPE_CHECKING:
    from tqdm import tqdm


class TerminalProgress:
    def __init__(self, label: str = "eval", *, out: TextIO | None = None,
                 err: TextIO | None = None, tag: str | None = None):
        self.label = label
        #: Put before each summary line, so two runs compared side by side read apart.
        self.tag = tag
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.bar: tqdm[None] | None = None

    def start(self, total_runs: int) -> None:
        if not self.err.isatty():
            return
        try:
            from tqdm import tqdm
        except ImportError:  # a plain install: summary lines only
            return
        self.bar = tqdm(total=total_runs, desc=self.label, unit="run", file=self.err,
                        disable=not self.err.isatty(), leave=False, dynamic_ncols=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def feature_done(self, result: FeatureResult) -> None:
        line = result.summary_line()
        if self.tag:
            line = f"[{self.tag}] {line}"
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line, file=self.out)  # clears and redraws the bar around the line
        else:
            print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
