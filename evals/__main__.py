"""`python -m featurelm.evals`: the eval command on its own, the same as `featurelm eval`."""

from __future__ import annotations

import sys

from featurelm.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
