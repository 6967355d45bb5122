"""The LiteLLM proxy the bench compares against, in its own virtualenv (.bench-venv/).

Kept apart from .venv so the proxy's many dependencies never meet featurelm's. Installed once;
a marker file records the requirement it was built for, so a changed pin rebuilds it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".bench-venv"
# 1.82.7 and 1.82.8 were compromised releases. httptools gives the proxy's uvicorn the same
# fast HTTP parser featurelm's `uvicorn[standard]` has; litellm[proxy] alone runs on h11.
REQUIREMENTS = ("litellm[proxy]>=1.80,!=1.82.7,!=1.82.8,<2", "httptools>=0.6")
#: LiteLLM fetches its price map from GitHub at import unless told to use the bundled one;
#: with no network that costs retries and seconds, which would distort cold start.
ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
       "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "True"}


def _marker() -> Path:
    return VENV / ".installed"


def ensure_venv(log: Path) -> Path:
    """The venv's bin/ directory, installing LiteLLM proxy first if needed."""
    wanted = "\n".join(REQUIREMENTS)
    bin_dir = VENV / "bin"
    if _marker().exists() and _marker().read_text() == wanted and (bin_dir / "litellm").exists():
        return bin_dir
    print(f"installing LiteLLM proxy into {VENV.name}/ (once) ...", file=sys.stderr, flush=True)
    with log.open("ab") as out:
        if not (bin_dir / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True,
                           stdout=out, stderr=subprocess.STDOUT)
        subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", *REQUIREMENTS],
                       check=True, stdout=out, stderr=subprocess.STDOUT)
    _marker().write_text(wanted)
    return bin_dir


def version(bin_dir: Path) -> str:
    out = subprocess.run([str(bin_dir / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"
