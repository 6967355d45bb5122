"""bench/ is a folder of the repository, not part of the installed package: its tests import it
from the checkout, appended to sys.path so the installed `featurelm` still comes first."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
