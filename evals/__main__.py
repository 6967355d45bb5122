"""`python -m evals`: the eval command on its own, the same as `featurelm eval`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from featurelm.evals.cli import add_arguments, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m evals", description="Run the eval suite.")
    add_arguments(parser)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
